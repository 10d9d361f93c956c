"""The results database: SQLite by default, PostgreSQL for a lab of several hosts.

    engines.py     where a database is (a path, sqlite:///PATH, postgresql://...) and the
                   two engines' connections, behind one set of calls
    migrations.py  the numbered migrations both engines run
    results.py     ResultStore: results, quality measurements, transactions, snapshots
    copy.py        `store copy`: a whole history from one database to another, verified

``from edgeshrink.store import ResultStore`` is all most code needs.
"""

from __future__ import annotations

from edgeshrink.store.copy import CopyReport, TableCopy, copy_store, table_checksums
from edgeshrink.store.engines import (
    Connection,
    Row,
    StoreLocation,
    mask_password,
    parse_location,
)
from edgeshrink.store.migrations import MIGRATIONS, SCHEMA_VERSION
from edgeshrink.store.results import (
    QUALITY_COLUMNS,
    RESULT_COLUMNS,
    ResultStore,
    StoredResult,
    default_db_path,
    insert_result,
)

__all__ = [
    "MIGRATIONS",
    "QUALITY_COLUMNS",
    "RESULT_COLUMNS",
    "SCHEMA_VERSION",
    "Connection",
    "CopyReport",
    "ResultStore",
    "Row",
    "StoreLocation",
    "StoredResult",
    "TableCopy",
    "copy_store",
    "default_db_path",
    "insert_result",
    "mask_password",
    "parse_location",
    "table_checksums",
]
