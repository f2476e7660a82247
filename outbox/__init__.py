"""The messaging runtime every service uses: transactional outbox, relay, inbox and consumer.

Business code needs one call, `outbox.add(session, event)`, to stage an event in the transaction
that changes its state; everything else is wired by `Messaging` from the service's `Manifest`.
"""

from outbox.manifest import Handler, Manifest
from outbox.parsing import PoisonMessage
from outbox.runtime import Messaging
from outbox.settings import MessagingSettings, local_database_url
from outbox.tracing import continuing, saga_traces
from outbox.writer import add

__all__ = [
    "Handler",
    "Manifest",
    "Messaging",
    "MessagingSettings",
    "PoisonMessage",
    "add",
    "continuing",
    "local_database_url",
    "saga_traces",
]
