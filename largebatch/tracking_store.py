"""The embedded MLflow store (SQLite): checked before anything is written, created once under a lock.

`check_sqlite_store` answers in one line, before any file is made, for a store that cannot work (a folder or a
non-SQLite file where the database should be, a parent that is a file, no store where one must exist).
`open_sqlite` makes a new store under an exclusive lock on its folder: MLflow creates and migrates a store on first
use, and two studies started at once in one fresh folder both died in that migration and left a half-made database
that failed every later study; under the lock the first creates it and the others wait, then open it.
`check_database_store` does the same for a database store MLflow reaches through SQLAlchemy (postgresql://,
mysql://, ...): one connection, before Ray starts, and a server that is not there, a wrong password or a missing
database is one line naming the URI (password masked) and the fix.
No mlflow import here: `tracking/client.py` hands in how to make its client.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Protocol, TypeVar

from largebatch.errors import BadInput
from largebatch.storage import nearest_existing

SQLITE_MAGIC = b"SQLite format 3\x00"
_sqlite_ready: set[str] = set()  # stores this process opened: MLflow keeps one engine per URI, made once


class _Client(Protocol):  # what open_sqlite uses of the MlflowClient that make() returns
    def search_experiments(self, *, max_results: int) -> object: ...


C = TypeVar("C", bound=_Client)


def sqlite_path(uri: str) -> Optional[Path]:
    """The file of a sqlite:/// tracking URI (query string dropped); None for any other URI or an in-memory one."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)  # an in-memory store has no file


def check_sqlite_store(path: Path, *, must_exist: bool = False, flag: str = "--mlflow") -> None:
    """One line, before anything is written, for a store that cannot work: a folder or another kind of file where the
    database should be, a parent that is a file or not writable, or (must_exist) no store at all."""
    fix = f"choose another {flag} (or MLFLOW_TRACKING_URI), e.g. sqlite:///runs/mlflow.db"
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise BadInput(f"{str(path)!r} is not a file (a folder or a dangling link); {fix}", field=flag)
        try:
            with open(path, "rb") as f:
                head = f.read(len(SQLITE_MAGIC))
        except OSError as e:
            raise BadInput(f"cannot read the MLflow store {str(path)!r} ({e.strerror}); {fix}", field=flag) from None
        if head and head != SQLITE_MAGIC:
            raise BadInput(f"{str(path)!r} is not an SQLite database (corrupt, or another file); move it away or "
                           f"{fix}", field=flag)
        if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
            raise BadInput(f"cannot write to the MLflow store {str(path)!r}; {fix}", field=flag)
        return
    if must_exist:
        raise BadInput(f"no MLflow store at {str(path)!r}: run a study first (`largebatch tune ...` in this folder) "
                       f"or give {flag} (or MLFLOW_TRACKING_URI)", field=flag)
    parent = nearest_existing(path.parent)
    if not parent.is_dir():
        raise BadInput(f"{str(parent)!r} is a file, so the MLflow store {str(path)!r} cannot be made under it; {fix}",
                       field=flag)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInput(f"cannot write to folder {str(parent)!r}, so the MLflow store {str(path)!r} cannot be made; "
                       f"{fix}", field=flag)


def open_sqlite(uri: str, path: Path, create: bool, make: Callable[[], C],
                describe: Callable[[BaseException], str]) -> C:
    """make() (the client of the SQLite store at `path`), checked first. Without `create` the store must exist
    (`report`, `ui`, a trial's logger). With it (a study's Tracker) the store is made and first used under an
    exclusive lock on its folder, so concurrent studies create it once; a store MLflow cannot open (half made,
    corrupt) is one line, `describe(e)` saying why."""
    import fcntl

    path = path.absolute()
    if uri in _sqlite_ready and path.is_file():
        return make()
    check_sqlite_store(path, must_exist=not create)
    if not create:
        return make()
    from largebatch.storage import make_dirs

    try:
        make_dirs(path.parent)
    except OSError as e:
        raise BadInput(f"cannot create folder {str(path.parent)!r} for the MLflow store ({e.strerror}); choose "
                       f"another --mlflow", field="--mlflow") from None
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor is closed
        try:
            client = make()
            client.search_experiments(max_results=1)  # a new store is created and migrated here, under the lock
        except Exception as e:
            if not _broken(e):
                raise
            raise BadInput(f"cannot open the MLflow store {str(path)!r} ({describe(e)}); move it away (an "
                           f"interrupted first study can leave it half made) or choose another --mlflow",
                           field="--mlflow") from None
        _sqlite_ready.add(uri)
        return client
    finally:
        os.close(fd)


def _broken(e: BaseException) -> bool:
    """An error that says the store itself is damaged (not a busy or slow one)."""
    text = f"{type(e).__name__} {e}".lower()
    return any(w in text for w in ("not a database", "malformed", "alembic", "already exists", "no such table",
                                   "no such column", "migration", "schema", "revision", "out-of-date"))


# MLflow's SQLAlchemy store schemes (mlflow.store.db.db_types), each with optional "+driver"
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
_DB_FIX = ("start the database server or fix {flag} (or MLFLOW_TRACKING_URI), "
           "e.g. postgresql://USER:PASSWORD@HOST:PORT/DB")


def database_scheme(uri: str) -> Optional[str]:
    """'postgresql' for postgresql://... and postgresql+psycopg://...; 'postgres' for the alias SQLAlchemy refuses;
    None for any other URI."""
    if "://" not in uri:
        return None
    base = uri.split("://", 1)[0].split("+", 1)[0].lower()
    return base if base in DATABASE_SCHEMES or base == "postgres" else None


def check_database_store(uri: str, timeout_s: float = 10.0, flag: str = "--mlflow") -> None:
    """One connection to a database store (postgresql://USER:PASSWORD@HOST:PORT/DB, ...) within timeout_s: a server
    that is not there, refused credentials, a missing database or a missing driver is one line (BadInput), the
    password masked. Nothing is created: MLflow makes its tables when the study's Tracker first uses the store."""
    from urllib.parse import unquote, urlsplit

    from largebatch.redact import redact_text

    try:
        password = urlsplit(uri).password
    except ValueError:
        password = None

    def masked(text: str) -> str:
        text = redact_text(text)
        for p in {password, unquote(password)} if password else ():
            text = text.replace(p, "***")
        return text

    shown = masked(uri)
    if database_scheme(uri) == "postgres":
        raise BadInput(f"got {shown}: SQLAlchemy (MLflow's database layer) takes postgresql://, not postgres://; "
                       f"write postgresql://USER:PASSWORD@HOST:PORT/DB", field=flag)
    import sqlalchemy
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError
    from sqlalchemy.pool import NullPool

    try:
        engine = sqlalchemy.create_engine(uri, poolclass=NullPool,
                                          connect_args={"connect_timeout": max(1, int(round(timeout_s)))})
    except (ImportError, NoSuchModuleError) as e:
        raise BadInput(f"cannot use the MLflow store {shown}: its database driver is not installed "
                       f"({masked(_first_line(e))}); install it (for postgresql://: pip install 'psycopg[binary]') or "
                       f"choose another {flag}", field=flag) from None
    except (ArgumentError, ValueError) as e:
        raise BadInput(f"got {shown}: not a database URI SQLAlchemy can read ({masked(_first_line(e))}); "
                       f"write postgresql://USER:PASSWORD@HOST:PORT/DB", field=flag) from None
    try:
        with engine.connect():
            pass
    except Exception as e:
        why = masked(_first_line(getattr(e, "orig", None) or e))
        low = why.lower()
        if "password authentication failed" in low or "access denied" in low:
            fix = f"fix the user or password in {flag} (or MLFLOW_TRACKING_URI)"
        elif "does not exist" in low or "unknown database" in low:
            fix = f"create the database on that server (e.g. createdb) or fix {flag} (or MLFLOW_TRACKING_URI)"
        else:
            fix = _DB_FIX.format(flag=flag)
        raise BadInput(f"cannot reach the MLflow store {shown} ({why}); {fix}", field=flag) from None
    finally:
        engine.dispose()


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(e).__name__
