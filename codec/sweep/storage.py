"""Where a sweep's study lives, and the lock that lets one process at a time create or reconcile it.

Storages: SQLite under the sweep directory (default), any SQLAlchemy URL (PostgreSQL for workers on
several machines: `postgresql://user:password@host/db`, driven by psycopg2), or `journal:PATH`
(Optuna's journal file).

The lock: a file lock for file-backed storages and for other databases (it serialises the
processes of one machine only), and a PostgreSQL advisory lock for PostgreSQL, which serialises
every process on every machine that uses the database. The server releases an advisory lock when
its session ends, so a worker killed while holding it blocks nobody; a lock table would need its
own clean-up, and a unique constraint would need a table of our own beside Optuna's schema.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

CREATE_ATTEMPTS = 5
# One key for the whole database: creating Optuna's tables is database-wide, and what the lock
# guards (create, fail dead trials, queue) takes well under a second.
ADVISORY_LOCK_KEY = int.from_bytes(hashlib.sha256(b"codec-lab sweep storage").digest()[:8], "big", signed=True)


class StorageError(RuntimeError):
    """A storage that cannot be opened: bad URL, unreachable server, missing driver."""


def storage_file(url: str) -> Path | None:
    """The local file behind a SQLite or journal URL, else None."""
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:"))
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    return None


def backend(url: str) -> str:
    """"journal", or the SQLAlchemy backend name ("sqlite", "postgresql", "mysql", ...)."""
    if url.startswith("journal:"):
        return "journal"
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).get_backend_name()
    except ArgumentError as e:
        raise StorageError(f"storage {url!r} is neither a SQLAlchemy URL nor journal:PATH ({e})") from None


def display_url(url: str) -> str:
    """The URL as it may be printed or written to results.md: any password masked."""
    if backend(url) == "journal":
        return url
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _first_line(error: BaseException) -> str:
    orig = getattr(error, "orig", None) or error  # SQLAlchemy wraps the driver's error
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def check_reachable(url: str) -> None:
    """Connect once to a database server (creating nothing), so that a wrong host or password stops
    the sweep before its objective check trains anything. Files need no check."""
    if storage_file(url) is not None:
        return
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        engine.connect().close()
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as e:
        raise StorageError(f"cannot open storage {display_url(url)}: {_first_line(e)}") from None


def open_storage(url: str, heartbeat: int = 60):
    """A SQLAlchemy URL (sqlite:///..., postgresql://...) or journal:PATH (a file, safe on NFS).

    `heartbeat` (seconds): each running trial records one; a trial silent for twice that is failed
    by any worker (Optuna's heartbeat), which is how a worker on another machine is known dead.
    Creating the tables of a fresh database races when several processes open it at once
    (`UNIQUE constraint failed: alembic_version`) outside the storage lock; the loser retries and
    finds the tables made."""
    file = storage_file(url)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("journal:"):
        return JournalStorage(JournalFileBackend(str(file)))
    from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:///") else {}
    for attempt in range(CREATE_ATTEMPTS):
        try:
            # Optuna calls the heartbeat experimental; it is what resuming needs.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                                     grace_period=2 * heartbeat)
            if storage.engine.name == "sqlite":
                _begin_sqlite_transactions_immediately(storage.engine)
            return storage
        except (IntegrityError, OperationalError) as e:
            if attempt == CREATE_ATTEMPTS - 1:
                raise StorageError(f"cannot open storage {display_url(url)}: {_first_line(e)}") from e
            time.sleep(0.2 * (attempt + 1))
        except (ArgumentError, ImportError) as e:  # a bad URL, an unknown dialect, a missing driver
            raise StorageError(f"cannot open storage {display_url(url)}: {_first_line(e)}") from e


def _begin_sqlite_transactions_immediately(engine) -> None:
    """Make SQLite transactions take the write lock before they read.

    Optuna moves a queued trial to RUNNING with SELECT ... FOR UPDATE, which SQLite ignores, and
    Python's sqlite3 opens a transaction only at the first write: two workers could both pop the
    same queued trial and train it twice (seen with -j 2; optuna#4621). With BEGIN IMMEDIATE (the
    SQLAlchemy recipe for pysqlite) the check and the update are one transaction. PostgreSQL locks
    the row itself."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" below starts transactions

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections pooled while the tables were made predate the listeners


@contextlib.contextmanager
def storage_lock(url: str, sweep_dir: Path):
    """Serialises the processes that create or reconcile a study: every process of every machine
    for PostgreSQL (advisory lock), this machine's for the rest (a file lock beside a file storage,
    else in the sweep directory)."""
    if backend(url) == "postgresql":
        with advisory_lock(url):
            yield
        return
    from filelock import FileLock

    file = storage_file(url)
    path = Path(f"{file}.lock") if file is not None else sweep_dir / ".study.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield


@contextlib.contextmanager
def advisory_lock(url: str, key: int = ADVISORY_LOCK_KEY):
    """PostgreSQL's session-level advisory lock on its own connection: waits for whoever holds it,
    and is released by the server if this process dies while holding it."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        connection = engine.connect()
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as e:
        raise StorageError(f"cannot open storage {display_url(url)}: {_first_line(e)}") from e
    try:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
        connection.commit()  # the lock is the session's, not the transaction's; end the transaction
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            connection.commit()
    finally:
        connection.close()
        engine.dispose()
