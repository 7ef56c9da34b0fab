"""Writes sent together: PostgreSQL statements whose results nothing waits for, in one.

A transaction may hold back such writes (``Transaction.write``) until it
must talk to the database anyway, before its next read or its commit, and
send them as one statement: each write a data-modifying ``WITH`` query of
it, and the statement's one row the number of rows each touched. An
allocation's writes (the line, the batch, the version, both views, the
outbox row) are then one round trip instead of six.

The queries of one statement run on one snapshot and do not see each
other's changes, so only writes that touch disjoint tables go together (a
write that touches a table one held back does, reads or changes, goes in
the next statement): in any order they do what one after the other would.
"""

from __future__ import annotations

from functools import cache
from typing import Any, cast

from sqlalchemy import bindparam, func, literal_column, select
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.selectable import Select
from sqlalchemy.sql.util import find_tables
from sqlalchemy.sql.visitors import ExternallyTraversible, replacement_traverse


@cache
def tables_of(statement: Executable) -> frozenset[str]:
    """Every table ``statement`` reads or changes."""
    found = find_tables(statement, include_crud=True, include_aliases=False)  # type: ignore[arg-type, unused-ignore]
    return frozenset(t.name for t in found if hasattr(t, "name"))


def prefix(index: int) -> str:
    """What the parameters of the ``index``-th write are renamed with, in the statement."""
    return f"w{index}_"


@cache
def combined(statements: tuple[Executable, ...]) -> Select[tuple[int, ...]]:
    """One statement for ``statements``: its row, how many rows each touched.

    Each write's parameters are renamed with ``prefix(i)``: two writes may
    use the same name.
    """
    counts = []
    for index, statement in enumerate(statements):
        renamed = _renamed(statement, prefix(index))
        if isinstance(renamed, UpdateBase) and not renamed._returning:
            renamed = renamed.returning(literal_column("1"))
        assert isinstance(renamed, UpdateBase | Select), statement
        query = renamed.cte(f"write{index}")
        counts.append(select(func.count()).select_from(query).scalar_subquery())
    return select(*counts)


def _renamed(statement: Executable, with_prefix: str) -> Executable:
    def rename(element: ExternallyTraversible, **_: Any) -> ExternallyTraversible | None:
        if isinstance(element, BindParameter):
            return bindparam(
                with_prefix + element.key,
                value=element.value,
                type_=element.type,
                required=element.required,
            )
        return None

    renamed = replacement_traverse(cast(ExternallyTraversible, statement), {}, rename)
    return cast(Executable, renamed)
