"""Where a results database is, and the two engines behind it: SQLite for one host,
PostgreSQL for a lab of many.

The store and the lab write their SQL once, with ``?`` marks, in the dialect both
engines read (``INSERT ... ON CONFLICT``, ``RETURNING id``).  What differs lives here:
how to connect, how a transaction starts (``BEGIN IMMEDIATE`` vs an advisory lock),
a consistent snapshot for readers, the database's clock, row locks that skip rows
another runner holds, and what a failure means to the user.  Both connections run in
autocommit mode and every transaction is an explicit ``BEGIN``: nothing stays open
between calls, so a reader never holds back a writer (or PostgreSQL's vacuum).
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from edgeshrink.errors import StoreError

LOCK_WAIT_S = 30.0
CONNECT_TIMEOUT_S = 10
POSTGRES_SCHEMES = ("postgresql", "postgres")
# The one advisory lock of "exclusive" transactions (schema changes, device locks, joining
# a run): PostgreSQL's counterpart of SQLite's single writer.  Any fixed number will do.
EXCLUSIVE_LOCK_KEY = 0x65647368  # "edsh"
INSTALL_HINT = "install PostgreSQL support: pip install 'edgeshrink[postgres]'"


# --------------------------------------------------------------------------- where


@dataclass(frozen=True)
class StoreLocation:
    """A results database: a SQLite file, or a PostgreSQL URL (kept with its password,
    which :attr:`display` never shows)."""

    engine: str  # "sqlite" | "postgresql"
    path: Path | None = None
    url: str | None = None
    named_by: str = "--db / EDGESHRINK_DB"  # what hints tell the user to change

    @property
    def display(self) -> str:
        return str(self.path) if self.path is not None else mask_password(self.url or "")

    @property
    def password(self) -> str | None:
        if self.url is None:
            return None
        secret = urlsplit(self.url).password
        return unquote(secret) if secret else None


def mask_password(url: str) -> str:
    """The URL with its password replaced by ``***`` (what messages and reports show)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def parse_location(
    db: str | os.PathLike[str] | None, named_by: str = "--db / EDGESHRINK_DB"
) -> StoreLocation:
    """``--db`` / ``EDGESHRINK_DB``: a path, ``sqlite:///PATH`` or ``postgresql://...``;
    nothing means the user data dir's ``results.db``.  ``named_by``: where the user gave
    it, for hints."""
    if db is None or str(db) == "":
        env = os.environ.get("EDGESHRINK_DB")
        if env:
            return parse_location(env, named_by)
        import platformdirs

        default = platformdirs.user_data_path("edgeshrink") / "results.db"
        return StoreLocation("sqlite", path=default, named_by=named_by)
    text = os.fspath(db)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in POSTGRES_SCHEMES:
        return StoreLocation("postgresql", url=text, named_by=named_by)
    if scheme == "sqlite":
        # sqlite:///results.db is relative, sqlite:////srv/r.db and sqlite:///~/r.db are not
        rest = text.split("://", 1)[1]
        if not rest.startswith("/") or rest == "/":
            raise StoreError(
                f"{text}: a SQLite URL is sqlite:///PATH",
                hint="e.g. sqlite:///results.db, sqlite:////srv/lab/results.db or a plain path",
            )
        return StoreLocation("sqlite", path=Path(rest[1:]).expanduser(), named_by=named_by)
    if scheme:
        raise StoreError(
            f"{mask_password(text)}: edgeshrink stores results in SQLite or PostgreSQL, not {scheme}",
            hint="give a file path, sqlite:///PATH or postgresql://USER@HOST/DATABASE",
        )
    return StoreLocation("sqlite", path=Path(text).expanduser(), named_by=named_by)


# --------------------------------------------------------------------------- rows


class Row(dict):
    """A row by column name (``row["id"]``, ``dict(row)``) or position (``row[0]``), like
    sqlite3.Row, from either engine."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int):
            return list(self.values())[key]
        return super().__getitem__(key)


def _sqlite_row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Row:
    return Row(zip([d[0] for d in cursor.description], values, strict=True))


def _postgres_rows(cursor: Any) -> Any:
    names = [c.name for c in cursor.description] if cursor.description else []

    def make(values: Sequence[Any]) -> Row:
        return Row(zip(names, values, strict=True))

    return make


# --------------------------------------------------------------------------- connections


class Connection:
    """One connection to a results database, the same calls on both engines."""

    engine = ""
    skip_locked = ""  # appended to a SELECT that claims rows: other claimers skip them
    errors: tuple[type[BaseException], ...] = ()

    def __init__(self, location: StoreLocation) -> None:
        self.location = location

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        raise NotImplementedError

    def stream(self, sql: str, args: Sequence[Any] = (), size: int = 1000) -> Iterator[list[Row]]:
        """The rows of a big SELECT in batches, without holding them all in memory
        (inside a transaction: PostgreSQL streams through a server-side cursor)."""
        raise NotImplementedError

    def begin(self, mode: str) -> None:
        """``write``, ``exclusive`` (serialised with every other exclusive transaction)
        or ``snapshot`` (read only, one consistent view until commit)."""
        raise NotImplementedError

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        self.execute("ROLLBACK")

    def close(self) -> None:
        raise NotImplementedError

    def now(self) -> float:
        """Seconds since the epoch on the database's clock: leases that several hosts
        compare must not depend on each host's own clock."""
        return time.time()

    def columns(self, table: str) -> list[str]:
        raise NotImplementedError

    def after_explicit_ids(self, table: str) -> None:
        """Rows were inserted with their ids: the next id must come after them."""

    def describe(self, exc: BaseException) -> StoreError:
        return StoreError(f"{self.location.display}: {exc}")

    def lost(self) -> bool:
        """True when the connection itself is gone (a server restarted or a proxy closed
        it), not merely a statement that failed."""
        return False

    def reconnect(self) -> None:
        raise NotImplementedError


class SqliteConnection(Connection):
    engine = "sqlite"
    errors = (sqlite3.DatabaseError,)

    def __init__(self, location: StoreLocation) -> None:
        super().__init__(location)
        assert location.path is not None
        location.path.parent.mkdir(parents=True, exist_ok=True)
        self.raw = sqlite3.connect(location.path, timeout=LOCK_WAIT_S, isolation_level=None)
        self.raw.row_factory = _sqlite_row
        self._enter_wal()
        self.raw.execute("PRAGMA foreign_keys=ON")

    def _enter_wal(self) -> None:
        """Switch a new file to WAL. SQLite answers "database is locked" at once, without
        its busy handler, when another first user is switching it too: wait like a write."""
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                self.raw.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def execute(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.raw.execute(sql, tuple(args))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.raw.executemany(sql, rows)

    def stream(self, sql: str, args: Sequence[Any] = (), size: int = 1000) -> Iterator[list[Row]]:
        cursor = self.raw.execute(sql, tuple(args))
        while rows := cursor.fetchmany(size):
            yield rows

    def begin(self, mode: str) -> None:
        # Every write takes the write lock at BEGIN: in WAL mode a transaction that read
        # first and then writes fails at once, without waiting, when another writer came
        # in between.  A snapshot is a deferred BEGIN: its first read fixes what it sees.
        self.execute("BEGIN" if mode == "snapshot" else "BEGIN IMMEDIATE")

    def close(self) -> None:
        self.raw.close()

    def columns(self, table: str) -> list[str]:
        return [r["name"] for r in self.raw.execute(f"PRAGMA table_info({table})").fetchall()]

    def describe(self, exc: BaseException) -> StoreError:
        return describe_sqlite_error(self.location, exc)


class PostgresConnection(Connection):
    engine = "postgresql"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, location: StoreLocation) -> None:
        super().__init__(location)
        try:
            import psycopg
        except ImportError as exc:
            raise StoreError(
                f"{location.display}: PostgreSQL support is not installed ({exc})",
                hint=INSTALL_HINT,
            ) from exc
        self.errors = (psycopg.Error,)
        self._sql_cache: dict[str, str] = {}
        self._cursors = 0
        self.psycopg = psycopg
        self.raw = self._connect()

    def _connect(self) -> Any:
        extra: dict[str, Any] = {"application_name": "edgeshrink"}
        if "connect_timeout" not in (self.location.url or ""):
            extra["connect_timeout"] = CONNECT_TIMEOUT_S  # libpq waits forever by default
        return self.psycopg.connect(
            self.location.url or "", autocommit=True, row_factory=_postgres_rows, **extra
        )

    def lost(self) -> bool:
        return bool(self.raw.closed or self.raw.broken)

    def reconnect(self) -> None:
        with contextlib.suppress(Exception):
            self.raw.close()
        self.raw = self._connect()

    def _sql(self, sql: str) -> str:
        """``?`` marks to psycopg's ``%s`` (and a literal ``%`` doubled)."""
        found = self._sql_cache.get(sql)
        if found is None:
            found = self._sql_cache[sql] = sql.replace("%", "%%").replace("?", "%s")
        return found

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self.raw.execute(self._sql(sql), tuple(args))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self.raw.cursor() as cursor:
            cursor.executemany(self._sql(sql), [tuple(r) for r in rows])

    def stream(self, sql: str, args: Sequence[Any] = (), size: int = 1000) -> Iterator[list[Row]]:
        self._cursors += 1
        with self.raw.cursor(name=f"edgeshrink_stream_{self._cursors}") as cursor:
            cursor.execute(self._sql(sql), tuple(args))
            while rows := cursor.fetchmany(size):
                yield rows

    def begin(self, mode: str) -> None:
        if mode == "snapshot":
            self.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            return
        self.execute("BEGIN")
        if mode == "exclusive":
            self.execute("SELECT pg_advisory_xact_lock(?)", (EXCLUSIVE_LOCK_KEY,))

    def close(self) -> None:
        self.raw.close()

    def now(self) -> float:
        row = self.raw.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8").fetchone()
        return float(row[0])

    def columns(self, table: str) -> list[str]:
        rows = self.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?"
            " AND table_schema = current_schema() ORDER BY ordinal_position",
            (table,),
        ).fetchall()
        return [r["column_name"] for r in rows]

    def after_explicit_ids(self, table: str) -> None:
        self.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
            f" COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
        )

    def describe(self, exc: BaseException) -> StoreError:
        return describe_postgres_error(self.location, exc)


def describe_sqlite_error(
    location: StoreLocation, exc: BaseException, *, opening: bool = False
) -> StoreError:
    text = str(exc)
    where, named_by = location.display, location.named_by
    if "not a database" in text or "malformed" in text:
        return StoreError(
            f"{where}: cannot open the results database: {exc}",
            hint=f"it is not a SQLite results database, or it is damaged: point {named_by} at "
            "another file (edgeshrink leaves this one as it is)",
        )
    hint = None
    if "locked" in text or "busy" in text:
        hint = f"another program holds the database locked: wait for it, or change {named_by}"
    what = "cannot open the results database: " if opening else ""
    return StoreError(f"{where}: {what}{exc}", hint=hint)


def describe_postgres_error(location: StoreLocation, exc: BaseException) -> StoreError:
    """One line for a PostgreSQL failure, with what to do about it; never the password."""
    text = " ".join(str(exc).split())
    secret = location.password
    if secret:
        text = text.replace(secret, "***")
    text = re.sub(r"^connection failed: ", "", text)
    where, named_by = location.display, location.named_by
    lower = text.lower()
    if "password authentication failed" in lower or "no password supplied" in lower:
        hint = "check the user and password in the URL (or PGPASSWORD / ~/.pgpass)"
    elif "does not exist" in lower and "database" in lower:
        hint = f"create the database first (createdb NAME on the server), or change {named_by}"
    elif any(s in lower for s in ("refused", "timeout", "could not translate", "no route",
                                  "network is unreachable", "could not connect")):  # fmt: skip
        hint = (
            "is the PostgreSQL server running and reachable from here? check the host and port "
            f"in {named_by}"
        )
    elif any(s in lower for s in ("closed the connection", "terminating connection",
                                  "connection is lost", "consuming input failed")):  # fmt: skip
        hint = (
            "the PostgreSQL server dropped the connection (a restart?): what this transaction "
            "wrote was rolled back; run the command again (`lab run --resume RUN_ID` goes on "
            "with the jobs a night left)"
        )
    elif "permission denied" in lower:
        hint = "the database user needs CREATE and write rights on the database's schema"
    else:
        hint = f"check {named_by}: a path, sqlite:///PATH or postgresql://USER@HOST/DB"
    return StoreError(f"{where}: cannot use the results database: {text}", hint=hint)


def connect(location: StoreLocation) -> Connection:
    if location.engine == "postgresql":
        return PostgresConnection(location)
    return SqliteConnection(location)


def open_failure(location: StoreLocation, exc: BaseException) -> StoreError | None:
    """What a failure while opening a database means, or None when it is not the database's."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, sqlite3.DatabaseError):
        return describe_sqlite_error(location, exc, opening=True)
    if type(exc).__module__.startswith("psycopg"):
        return describe_postgres_error(location, exc)
    if isinstance(exc, OSError):
        return StoreError(f"{location.display}: cannot create the results database: {exc}")
    return None
