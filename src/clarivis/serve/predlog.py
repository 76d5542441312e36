"""The prediction log: one row per served prediction, in SQLite by default or any SQLAlchemy URL.

What is kept is what a monitor needs (time, model version, label, confidence, latency, input
size, a content hash); the image itself only with store_images, because images can be personal
data and grow the log by ~100 KB a row. Kept torch-free: the service may run without torch.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clarivis.errors import ClarivisError, ModelError
from clarivis.extras import needs
from clarivis.spec import resolve_bundle_path

with needs("serve", "the prediction log (clarivis serve, monitor)"):
    from sqlalchemy import (
        BigInteger,
        Column,
        DateTime,
        Engine,
        Float,
        Integer,
        LargeBinary,
        MetaData,
        String,
        Table,
        create_engine,
        event,
        func,
        insert,
        select,
    )
    from sqlalchemy.engine import URL, make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
    from sqlalchemy.pool import StaticPool

ENV_VAR = "CLARIVIS_DB_URL"
DEFAULT_DB_NAME = "predictions.db"
URL_EXAMPLES = "sqlite:///runs/NAME/predictions.db or postgresql://user:password@host:5432/clarivis"

# How long a SQLite writer waits for another one (another thread or another server process)
# to commit before giving up. A commit of one request's rows takes milliseconds, so 30 s only
# runs out when something holds the database locked (a long-running manual query).
SQLITE_BUSY_TIMEOUT_S = 30.0

metadata = MetaData()

# Times are stored as naive UTC ("timestamp without time zone"): SQLite has no time zone type, so
# storing UTC everywhere and attaching it on read gives the same values on SQLite and PostgreSQL.
predictions = Table(
    "predictions",
    metadata,
    # BIGINT on PostgreSQL (a busy service passes 2^31 rows); SQLite only auto-increments INTEGER.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("time", DateTime(timezone=False), nullable=False, index=True),
    Column("model_version", String(64), nullable=False, index=True),
    Column("label", String(255), nullable=False),
    Column("confidence", Float, nullable=False),  # calibrated top-1 probability, 0..1
    Column("latency_ms", Float, nullable=False),  # request in to answer out, milliseconds
    Column("width", Integer, nullable=False),  # decoded image size in pixels
    Column("height", Integer, nullable=False),
    Column("num_bytes", Integer, nullable=False),  # uploaded file size in bytes
    Column("sha256", String(64), nullable=False),  # hex digest of the uploaded bytes
    Column("ood_score", Float, nullable=True),  # open-set score when the bundle has a threshold
    Column("image", LargeBinary, nullable=True),  # the uploaded bytes, only with store_images
)


@dataclass
class LoggedPrediction:
    """One served prediction. `time` is UTC (a naive datetime is taken as UTC)."""

    time: datetime
    model_version: str
    label: str
    confidence: float
    latency_ms: float
    width: int
    height: int
    num_bytes: int
    sha256: str
    ood_score: float | None = None
    image: bytes | None = None  # dropped unless the log was opened with store_images=True

    def __post_init__(self) -> None:
        # Backends may hand numpy scalars; the database and JSON take plain numbers.
        self.confidence, self.latency_ms = float(self.confidence), float(self.latency_ms)
        self.width, self.height = int(self.width), int(self.height)
        self.ood_score = None if self.ood_score is None else float(self.ood_score)

    @classmethod
    def from_upload(cls, data: bytes, *, time: datetime | None = None, **fields: Any) -> LoggedPrediction:
        """Fill num_bytes, sha256 and image from the uploaded bytes; time defaults to now (UTC).
        `fields`: the other fields by keyword (model_version, label, confidence, latency_ms,
        width, height, optional ood_score)."""
        return cls(time=time or datetime.now(UTC), num_bytes=len(data),
                   sha256=hashlib.sha256(data).hexdigest(), image=data, **fields)


def to_naive_utc(t: datetime) -> datetime:
    """The stored form of a time: UTC without tzinfo (naive input is already UTC)."""
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo is not None else t


def as_utc(t: datetime) -> datetime:
    """A stored time back as an aware UTC datetime (PostgreSQL may already return one)."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def default_db_url(model_dir: str | Path) -> str:
    """$CLARIVIS_DB_URL, else a SQLite file in the run folder (beside runs/NAME/model): the log
    stays with the run, outside the bundle, so copying the bundle never copies served traffic."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return env
    try:
        folder = resolve_bundle_path(model_dir)  # a run folder was given: its bundle is model/
    except ModelError:
        folder = Path(model_dir).expanduser()  # not a bundle (yet): the log goes beside it
    return f"sqlite:///{(folder.resolve().parent / DEFAULT_DB_NAME).as_posix()}"


def safe_url(url: str | URL) -> str:
    """The URL for messages and reports, password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


class PredictionLog:
    """Append predictions, count and read them back. Thread-safe; one transaction per record()."""

    def __init__(self, url: str | None = None, *, store_images: bool = False) -> None:
        url = url or os.environ.get(ENV_VAR, "").strip()
        if not url:
            raise ClarivisError(f"no prediction log URL: pass one or set {ENV_VAR} "
                                f"(e.g. {URL_EXAMPLES})")
        self.store_images = store_images
        self.engine = _open_engine(url)
        self.url = safe_url(self.engine.url)
        # SQLite has one writer at a time; queueing this process's writers on a lock is cheaper
        # than each polling SQLite's busy handler. PostgreSQL takes concurrent inserts as they are.
        self._write_lock = threading.Lock() if self.engine.dialect.name == "sqlite" else None
        try:
            metadata.create_all(self.engine)  # no-op when the table and indexes exist
        except SQLAlchemyError as err:
            self.engine.dispose()
            raise ClarivisError(f"cannot open the prediction log at {self.url} ({_reason(err)}); "
                                "check the server is running and the user may create tables") from None

    @classmethod
    def for_model(cls, model_dir: str | Path, url: str | None = None, *,
                  store_images: bool = False) -> PredictionLog:
        """The log of a served bundle: `url`, else $CLARIVIS_DB_URL, else RUN/predictions.db."""
        return cls(url or default_db_url(model_dir), store_images=store_images)

    def record(self, entries: list[LoggedPrediction]) -> None:
        """Insert all entries in one transaction (all or none are stored)."""
        if not entries:
            return
        rows = [_row(e, self.store_images) for e in entries]
        if self._write_lock is None:
            self._insert(rows)
        else:
            with self._write_lock:
                self._insert(rows)

    def count(self, model_version: str | None = None) -> int:
        """Rows in the log, all versions or one."""
        stmt = select(func.count()).select_from(predictions)
        if model_version is not None:
            stmt = stmt.where(predictions.c.model_version == model_version)
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def query(self, since: datetime | None = None, model_version: str | None = None, *,
              limit: int | None = None) -> list[LoggedPrediction]:
        """Predictions at or after `since` (UTC), oldest first."""
        stmt = select(predictions).order_by(predictions.c.time, predictions.c.id)
        if since is not None:
            stmt = stmt.where(predictions.c.time >= to_naive_utc(since))
        if model_version is not None:
            stmt = stmt.where(predictions.c.model_version == model_version)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
        return [LoggedPrediction(**{k: v for k, v in r.items() if k != "id"} | {"time": as_utc(r["time"])})
                for r in rows]

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _insert(self, rows: list[dict]) -> None:
        try:
            with self.engine.begin() as conn:  # commits on success, rolls back on error
                conn.execute(insert(predictions), rows)
        except SQLAlchemyError as err:
            raise ClarivisError(f"cannot write to the prediction log at {self.url} ({_reason(err)}); "
                                "check the database is reachable and has free space") from None


def _row(e: LoggedPrediction, store_images: bool) -> dict:
    return {"time": to_naive_utc(e.time), "model_version": e.model_version, "label": e.label,
            "confidence": float(e.confidence), "latency_ms": float(e.latency_ms),
            "width": int(e.width), "height": int(e.height), "num_bytes": int(e.num_bytes),
            "sha256": e.sha256, "ood_score": None if e.ood_score is None else float(e.ood_score),
            "image": e.image if store_images else None}


def _open_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ClarivisError(f"'{url}' is not a database URL; use e.g. {URL_EXAMPLES}") from None
    kwargs: dict = {}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            # One shared in-memory database: every pooled connection would otherwise get its own.
            kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        else:
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    try:
        engine = create_engine(parsed, **kwargs)
    except NoSuchModuleError:
        raise ClarivisError(f"unknown database '{parsed.drivername}' in {safe_url(parsed)}; "
                            f"use e.g. {URL_EXAMPLES}") from None
    except ImportError as err:
        raise ClarivisError(f"the Python driver for {parsed.drivername} URLs is not installed (module "
                            f"{err.name}); install it, e.g. pip install 'psycopg[binary]' for "
                            "postgresql://") from None
    except ArgumentError as err:
        raise ClarivisError(f"bad database URL {safe_url(parsed)} ({err}); use e.g. {URL_EXAMPLES}") from None
    if engine.dialect.name == "sqlite" and (parsed.database or ":memory:") != ":memory:":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    """WAL lets the monitor (and other readers) read while the server writes, and lets writers
    from several server processes queue on the busy timeout instead of failing with 'database is
    locked'. synchronous=NORMAL is WAL's recommended pairing: durable across process crashes,
    costs one fsync per checkpoint rather than per commit."""
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cursor.close()


def _reason(err: SQLAlchemyError) -> str:
    """The driver's own first line, without SQLAlchemy's statement dump and help link."""
    orig = getattr(err, "orig", None)
    text = str(orig if orig is not None else err).strip().splitlines()
    return (text[0] if text else err.__class__.__name__)[:200]
