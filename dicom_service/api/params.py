"""Query and path parameter types shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

#: The largest integer SQLite stores (ids and offsets beyond it are a 422, not a 500).
SQLITE_MAX_INT = 2**63 - 1

#: ``limit`` of a listing.
Limit = Annotated[int, Query(ge=1, le=1000)]
#: ``offset`` of a listing.
Offset = Annotated[int, Query(ge=0, le=SQLITE_MAX_INT)]
