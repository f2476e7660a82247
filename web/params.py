"""Parameters every service's API shares: the name pattern of customer ids and skus, and pages.

Litestar applies `PathParameter` and `QueryParameter` constraints to parameters; it ignores
`msgspec.Meta` there, and PostgreSQL refuses the NUL byte an unchecked one lets through (a 500,
not a 400). Bodies take `Name`, checked by msgspec.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar.params import PathParameter, QueryParameter

#: Customer ids and skus: 1-64 characters of `[A-Za-z0-9_.-]` (docs/spec.md §6).
NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
NAME_MAX_LENGTH = 64
#: Most rows one page of a list holds, and how many a list gives when not told.
MAX_PAGE = 1000
DEFAULT_PAGE = 100

#: A customer id or a sku in a body.
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=NAME_MAX_LENGTH, pattern=NAME_PATTERN)]
#: A customer id or a sku in the path.
NameInPath = Annotated[
    str, PathParameter(min_length=1, max_length=NAME_MAX_LENGTH, pattern=NAME_PATTERN)
]
#: An optional customer id in the query (`?customer_id=`), to list one customer's rows.
SomeCustomerId = Annotated[
    str | None, QueryParameter(min_length=1, max_length=NAME_MAX_LENGTH, pattern=NAME_PATTERN)
]
#: A page's size: `limit: Limit = DEFAULT_PAGE`.
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)]
#: Rows skipped before the page; past a bigint, PostgreSQL would refuse it (a 500, not a 400).
Offset = Annotated[int, QueryParameter(ge=0, le=10**9)]
