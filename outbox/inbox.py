"""The inbox: a consumer records each message it handles, in the handler's own transaction."""

from __future__ import annotations

import uuid

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts import Event, event_name
from outbox.tables import InboxMessage


async def claim(
    session: AsyncSession,
    consumer: str,
    message_id: uuid.UUID,
    event: Event,
    emitted_by: str | None,
) -> bool:
    """True if `consumer` has not handled `message_id` before; the claim commits with the handler.

    `ON CONFLICT DO NOTHING`, not insert-and-catch: a unique violation would abort the transaction.
    A concurrent duplicate waits on the first one's row lock and then finds it taken.
    """
    result = await session.execute(
        insert(InboxMessage)
        .values(
            consumer=consumer,
            message_id=message_id,
            event_type=event_name(event),
            order_id=event.order_id,
            emitted_by=emitted_by,
        )
        .on_conflict_do_nothing()
        .returning(InboxMessage.message_id)
    )
    return result.first() is not None
