"""The prediction log: one row per served prediction, in SQLite by default or any SQLAlchemy URL.

What is kept is what a monitor needs (time, model version, label, confidence, latency, input
size, a content hash); the image itself only with store_images, because images can be personal
data and grow the log by ~100 KB a row. Kept torch-free: the service may run without torch.

Writes go through a local journal (serve/journal.py): record() appends the rows to this process's
journal file and returns; a background writer inserts them in batches and deletes what is
committed. So a request never waits for a database transaction, an outage of the database costs
no answers (the writer retries with backoff and catches up), and a crash loses nothing (the next
process to open the log replays what is left). Every row carries a uid made at record time and
is inserted with ON CONFLICT DO NOTHING, so a replay never writes a row twice.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clarivis.errors import ClarivisError, ModelError
from clarivis.extras import needs
from clarivis.serve.journal import (
    Journal,
    Orphan,
    Segment,
    journal_folder,
    read_segment,
    release,
    remove_segment,
)
from clarivis.spec import resolve_bundle_path

with needs("serve", "the prediction log (clarivis serve, monitor)"):
    from sqlalchemy import (
        BigInteger,
        Column,
        DateTime,
        Engine,
        Float,
        Index,
        Integer,
        LargeBinary,
        MetaData,
        String,
        Table,
        create_engine,
        event,
        func,
        insert,
        inspect,
        select,
        text,
    )
    from sqlalchemy.dialects.postgresql import insert as postgresql_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert
    from sqlalchemy.engine import URL, make_url
    from sqlalchemy.exc import (
        ArgumentError,
        DataError,
        IntegrityError,
        NoSuchModuleError,
        SQLAlchemyError,
    )
    from sqlalchemy.pool import StaticPool

log = logging.getLogger("clarivis.serve")

ENV_VAR = "CLARIVIS_DB_URL"
DEFAULT_DB_NAME = "predictions.db"
JOURNAL_DIR = "predlog-journal"  # beside the run (RUN/predlog-journal) or the SQLite file
JOURNAL_ENV = "CLARIVIS_JOURNAL_DIR"  # where the service journals instead
URL_EXAMPLES = "sqlite:///runs/NAME/predictions.db or postgresql://user:password@host:5432/clarivis"

# How long a SQLite writer waits for another one (another server process's writer) to commit
# before giving up. A batch commits in milliseconds, so 30 s only runs out when something holds
# the database locked (a long-running manual query); the writer then retries, requests never wait.
SQLITE_BUSY_TIMEOUT_S = 30.0
# A PostgreSQL host that does not answer (not one that refuses) would otherwise hold the writer
# for the kernel's TCP timeout, minutes; 5 s is far above a healthy connect (milliseconds).
PG_CONNECT_TIMEOUT_S = 5
# Rows per INSERT transaction: one transaction per request would put a commit in every request's
# cost; 500 rows commit in a few milliseconds on SQLite and bound a transaction's memory when a
# backlog (an outage's journal) is replayed. With store_images a batch holds up to ~50 MB.
BATCH_ROWS = 500
# Retry after a failed write: 0.5 s doubling to 30 s. A restarting database is back within
# seconds; a long outage is polled twice a minute, which costs it nothing.
RETRY_MIN_S, RETRY_MAX_S = 0.5, 30.0
# The writer waits this long after a first row before writing, so the rows of every request in
# that span share one transaction: at a steady 100 requests/s, ~25 rows a commit instead of one
# (measured: a commit per request cost the service ~3 ms of CPU a request at 32 px). Rows reach
# the database this much later; the monitor and count() flush first, so nobody reads stale.
WRITE_DELAY_S = 0.25
# How often a live process looks for journals left by dead ones (a crashed worker; at start too)
# and, when it has nothing to write, pings the database so status() stays current.
ORPHAN_SCAN_S = 60.0
# close() waits this long for the journal to reach the database; the rest stays journaled.
CLOSE_FLUSH_S = 10.0
# count() and query() first wait this long for this process's own recorded rows.
READ_FLUSH_S = 5.0
# Column sizes: values over them would be refused by PostgreSQL forever, so record() refuses them.
TEXT_LIMITS = {"model_version": 64, "label": 255, "sha256": 64}

metadata = MetaData()

# Times are stored as naive UTC ("timestamp without time zone"): SQLite has no time zone type, so
# storing UTC everywhere and attaching it on read gives the same values on SQLite and PostgreSQL.
predictions = Table(
    "predictions",
    metadata,
    # BIGINT on PostgreSQL (a busy service passes 2^31 rows); SQLite only auto-increments INTEGER.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("time", DateTime(timezone=False), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("label", String(255), nullable=False),
    Column("confidence", Float, nullable=False),  # calibrated top-1 probability, 0..1
    Column("latency_ms", Float, nullable=False),  # request in to answer out, milliseconds
    Column("width", Integer, nullable=False),  # decoded image size in pixels
    Column("height", Integer, nullable=False),
    Column("num_bytes", Integer, nullable=False),  # uploaded file size in bytes
    Column("sha256", String(64), nullable=False),  # hex digest of the uploaded bytes
    Column("ood_score", Float, nullable=True),  # open-set score when the bundle has a threshold
    Column("image", LargeBinary, nullable=True),  # the uploaded bytes, only with store_images
    # 32 hex digits (uuid4) made at record time: a replayed journal line inserts nothing new.
    # NULL in rows logged before it existed (a unique index allows many NULLs in both databases).
    Column("uid", String(32), nullable=True),
    Index("uq_predictions_uid", "uid", unique=True),
    # What the monitor reads (serve/monitor.py). Its GROUP BYs over a time window read this index
    # alone: a range of it for --since, all of it (narrower than the table, whose rows carry
    # hashes and, with store_images, images) for the whole log. It also serves time ranges and
    # (time, version) filters, as the single-column indexes of older logs did.
    Index("ix_predictions_monitor", "time", "model_version", "label", "confidence", "latency_ms"),
    Index("ix_predictions_confidence", "confidence"),  # the review queue, lowest first
    Index("ix_predictions_latency_time", "latency_ms", "time"),  # percentiles: an ordered walk
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
    return f"sqlite:///{(run_folder(model_dir) / DEFAULT_DB_NAME).as_posix()}"


def run_folder(model_dir: str | Path) -> Path:
    """The folder above the bundle (RUN for RUN/model or RUN), where the log and journal live."""
    try:
        folder = resolve_bundle_path(model_dir)  # a run folder was given: its bundle is model/
    except ModelError:
        folder = Path(model_dir).expanduser()  # not a bundle (yet): the log goes beside it
    return folder.resolve().parent


def safe_url(url: str | URL) -> str:
    """The URL for messages and reports, password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def public_url(url: str | URL) -> str:
    """The URL for HTTP clients: password hidden and no server path (a SQLite file by its name)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "<unparseable URL>"
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        return "sqlite://" if database in ("", ":memory:") else f"sqlite:///{Path(database).name}"
    return parsed.render_as_string(hide_password=True)


class LogUnavailableError(ClarivisError):
    """The log's database cannot be read now (down, unreachable, locked): a 503, not the
    client's mistake. Writes never raise it: they wait in the journal."""


class LogDatabase:
    """The table behind the log: engine, schema and its migration, batched idempotent inserts.
    The monitor reads through one of these without a journal or a writer thread."""

    def __init__(self, url: str) -> None:
        self.engine = _open_engine(url)
        self.url = safe_url(self.engine.url)
        self.public_url = public_url(self.engine.url)
        self.dialect = self.engine.dialect.name

    def ensure_schema(self) -> None:
        """Create the table and its indexes, or bring an older log up to date in place (add the
        uid column and the indexes it lacks; old rows stay as they are). Raises ClarivisError."""
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    if self.dialect == "postgresql":
                        # Workers starting together take turns (released at commit).
                        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
                    metadata.create_all(conn)  # a new table comes with every column and index
                    _migrate(conn)
                return
            except SQLAlchemyError as err:
                # SQLite: another process created the table or index between our check and ours.
                if attempt == 2 or not _is_already_exists(err):
                    raise ClarivisError(f"cannot open the prediction log at {self.url} ({_reason(err)}); "
                                        "check the server is running and the user may create tables"
                                        ) from None

    def has_table(self) -> bool:
        return self._read(lambda conn: inspect(conn).has_table(predictions.name))

    def insert_new(self, rows: list[dict], reject) -> None:
        """Insert the rows in one transaction, skipping uids already stored. Rows the database
        refuses for good (a constraint or a value, not an outage) go to reject(row, reason) one by
        one; other errors (SQLAlchemyError: unreachable, locked, no space) propagate for a retry."""
        try:
            self._insert(rows)
        except (IntegrityError, DataError):
            for row in rows:
                try:
                    self._insert([row])
                except (IntegrityError, DataError) as err:
                    log.error("the prediction log refused a row (%s); kept in the journal's rejected file",
                              _reason(err))
                    reject(row, _reason(err))

    def count(self, model_version: str | None = None) -> int:
        stmt = select(func.count()).select_from(predictions)
        if model_version is not None:
            stmt = stmt.where(predictions.c.model_version == model_version)
        return int(self._read(lambda conn: conn.execute(stmt).scalar_one()))

    def query(self, since: datetime | None = None, model_version: str | None = None, *,
              limit: int | None = None) -> list[LoggedPrediction]:
        stmt = select(predictions).order_by(predictions.c.time, predictions.c.id)
        if since is not None:
            stmt = stmt.where(predictions.c.time >= to_naive_utc(since))
        if model_version is not None:
            stmt = stmt.where(predictions.c.model_version == model_version)
        if limit is not None:
            stmt = stmt.limit(limit)
        rows = self._read(lambda conn: conn.execute(stmt).mappings().all())
        return [LoggedPrediction(**{k: v for k, v in r.items() if k not in ("id", "uid")}
                                 | {"time": as_utc(r["time"])}) for r in rows]

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except SQLAlchemyError:
            return False

    def dispose(self) -> None:
        self.engine.dispose()

    def raise_unavailable(self, err: SQLAlchemyError):
        raise LogUnavailableError(f"cannot read the prediction log at {self.url} ({_reason(err)}); "
                                  "check the database is running and reachable") from None

    def _read(self, fn):
        try:
            with self.engine.connect() as conn:
                return fn(conn)
        except SQLAlchemyError as err:
            self.raise_unavailable(err)

    def _insert(self, rows: list[dict]) -> None:
        with self.engine.begin() as conn:  # commits on success, rolls back on error
            if self.dialect in ("sqlite", "postgresql"):
                make = sqlite_insert if self.dialect == "sqlite" else postgresql_insert
                conn.execute(make(predictions).on_conflict_do_nothing(index_elements=["uid"]), rows)
                return
            # Other databases: leave out the uids already stored (a replay), in the same transaction.
            uids = [r["uid"] for r in rows]
            stored = set(conn.execute(select(predictions.c.uid).where(predictions.c.uid.in_(uids))).scalars())
            fresh = [r for r in rows if r["uid"] not in stored]
            if fresh:
                conn.execute(insert(predictions), fresh)


class PredictionLog:
    """Record predictions (fast: to the journal), read them back, and say how the log is doing.
    Thread-safe. One per server process; processes may share a database and a journal folder."""

    def __init__(self, url: str | None = None, *, store_images: bool = False,
                 journal_dir: str | Path | None = None, require_db: bool = True) -> None:
        """`journal_dir`: the folder for journals [beside a SQLite file; else
        ~/.local/state/clarivis/predlog-journal; for_model: RUN/predlog-journal]. `require_db`:
        fail here when the database cannot be reached (a wrong URL shows at start); False starts
        anyway and journals until it answers."""
        url = url or os.environ.get(ENV_VAR, "").strip()
        if not url:
            raise ClarivisError(f"no prediction log URL: pass one or set {ENV_VAR} "
                                f"(e.g. {URL_EXAMPLES})")
        self.store_images = store_images
        self.db = LogDatabase(url)
        self.engine, self.url, self.public_url = self.db.engine, self.db.url, self.db.public_url
        self._cond = threading.Condition()
        self._db_ok: bool | None = None
        self._last_error: str | None = None
        try:
            self.db.ensure_schema()
            self._db_ok = True
        except ClarivisError as err:
            if require_db:
                self.db.dispose()
                raise
            self._db_ok, self._last_error = False, str(err)
        self._schema_ok = bool(self._db_ok)
        self._tmp_root = None
        root = journal_dir if journal_dir is not None else _default_journal_root(self.engine.url)
        if root is None:  # an in-memory database dies with the process; so may its journal
            root = self._tmp_root = tempfile.mkdtemp(prefix="clarivis-journal-")
        try:
            self.journal = Journal(journal_folder(root, self.db.dialect, _identity(self.engine.url)),
                                   description=self.url)
        except OSError as err:
            self.db.dispose()
            raise ClarivisError(f"cannot create the prediction journal in {root} ({err.strerror or err}); "
                                "pass a writable folder or fix its permissions") from None
        self._appended = 0  # rows recorded into this process's journal
        self._committed = 0  # of those, rows in the database (or rejected by it for good)
        self._failures = 0  # failed write attempts, so flush() can stop waiting after one
        self._rejected = 0
        self._retry_at = 0.0  # time.monotonic() before which the writer does not retry
        self._write_at = 0.0  # time.monotonic() before which the writer gathers rows (WRITE_DELAY_S)
        self._backoff = 0.0
        self._last_write: datetime | None = None
        self._closed = self._stopping = False
        self._sealed: list[Segment] = []  # the writer's own sealed segments, oldest first
        self._orphans: list[Orphan] = []  # dead processes' journals it adopted
        self._adopt()  # before the writer starts: a flush() from now on waits for them too
        self._thread = threading.Thread(target=self._run, name="clarivis-predlog-writer", daemon=True)
        self._thread.start()

    @classmethod
    def for_model(cls, model_dir: str | Path, url: str | None = None, *, store_images: bool = False,
                  require_db: bool = True) -> PredictionLog:
        """The log of a served bundle: `url`, else $CLARIVIS_DB_URL, else RUN/predictions.db; its
        journal in $CLARIVIS_JOURNAL_DIR, else RUN/predlog-journal (a container whose bundle is
        mounted read-only points the variable at a writable volume)."""
        journal = os.environ.get(JOURNAL_ENV, "").strip()
        return cls(url or default_db_url(model_dir), store_images=store_images,
                   journal_dir=Path(journal) if journal else run_folder(model_dir) / JOURNAL_DIR,
                   require_db=require_db)

    # ------------------------------------------------------------------ writing

    def record(self, entries: list[LoggedPrediction]) -> None:
        """Journal the entries (one line: after a crash all or none of them are replayed) and
        return; the writer puts them in the database. Raises ClarivisError for entries that no
        database would take and when the journal cannot be written (disk full), never because
        the database is slow or away."""
        if not entries:
            return
        rows = [_row(e, self.store_images) for e in entries]
        with self._cond:
            if self._closed:
                raise ClarivisError("the prediction log is closed; the server is shutting down")
            try:
                self.journal.append(rows)
            except OSError as err:
                raise ClarivisError(f"cannot journal predictions in {self.journal.folder} "
                                    f"({err.strerror or err}); free disk space there") from None
            if self._appended == self._committed:  # the first row since the last write
                self._write_at = time.monotonic() + WRITE_DELAY_S
            self._appended += len(rows)
            if self._appended - self._committed >= BATCH_ROWS:
                self._write_at = 0.0  # a full batch: no reason to wait
            self._cond.notify_all()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Write what is journaled now (retrying at once, whatever the backoff) and wait up to
        `timeout_s`. True when all of it is in the database; False after a failed attempt or
        the timeout (it stays journaled and the writer keeps trying)."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._cond:
            target, failures = self._appended, self._failures
            self._retry_at = self._write_at = 0.0
            self._cond.notify_all()
            while self._committed < target or self._orphans:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._failures > failures or not self._thread.is_alive():
                    return False
                self._cond.wait(remaining)
            return True

    def status(self) -> dict:
        """For /readyz and /v1/monitor (no paths): `db_reachable` (the last write attempt, or
        the schema check at start), `pending_rows` (journaled, not yet in the database),
        `adopted_files` (journal files of dead processes still to replay), `rejected_rows`,
        `last_error` (one line), `last_write` (ISO time), `accepting` (record() works)."""
        with self._cond:
            return {"db_reachable": self._db_ok, "pending_rows": self._appended - self._committed,
                    "adopted_files": sum(len(o.segments) for o in self._orphans),
                    "rejected_rows": self._rejected, "last_error": self._last_error,
                    "last_write": self._last_write.isoformat() if self._last_write else None,
                    "accepting": not self._closed and self._thread.is_alive()}

    def close(self, timeout_s: float = CLOSE_FLUSH_S) -> None:
        """Stop taking records, write what can be written within `timeout_s`, and leave the rest
        in the journal for the next process that opens this log."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + timeout_s
        # Retried until the deadline: a database restarting with the service comes back in seconds.
        while not self.flush(max(0.0, deadline - time.monotonic())) and time.monotonic() < deadline:
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        # A write in progress ends within the connect or busy timeout.
        self._thread.join(timeout=SQLITE_BUSY_TIMEOUT_S + PG_CONNECT_TIMEOUT_S)
        if self._thread.is_alive():  # stuck in the driver: its files stay for the next process
            log.warning("the prediction log writer did not stop; its journal stays for the next start")
            return
        last = self.journal.seal()
        if last:
            self._sealed.append(last)
        left = [s.path for s in self._sealed] + [p for o in self._orphans for p in o.segments]
        if left:
            pending = self._appended - self._committed
            log.warning("%d predictions (and %d adopted journal files) are not in the prediction log "
                        "at %s (%s); they stay journaled and are written when the log is next opened",
                        pending, sum(len(o.segments) for o in self._orphans), self.url, self._last_error)
            _quietly(self.journal.sync, left)
        self.journal.close(remove=not self._sealed)
        for orphan in self._orphans:
            release(orphan.lock_path, orphan.lock_fd, remove=False)
        self.db.dispose()
        if self._tmp_root:
            shutil.rmtree(self._tmp_root, ignore_errors=True)

    # ------------------------------------------------------------------ reading

    def count(self, model_version: str | None = None) -> int:
        """Rows in the log, all versions or one (this process's records written first)."""
        self.flush(READ_FLUSH_S)
        return self.db.count(model_version)

    def query(self, since: datetime | None = None, model_version: str | None = None, *,
              limit: int | None = None) -> list[LoggedPrediction]:
        """Predictions at or after `since` (UTC), oldest first (this process's written first)."""
        self.flush(READ_FLUSH_S)
        return self.db.query(since, model_version, limit=limit)

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        next_scan = time.monotonic() + ORPHAN_SCAN_S  # the constructor adopted the first ones
        while True:
            with self._cond:
                while not self._stopping:
                    now = time.monotonic()
                    pending = self._committed < self._appended or bool(self._orphans)
                    write_at = max(self._retry_at, self._write_at)
                    if now >= next_scan or (pending and now >= write_at):
                        break
                    self._cond.wait(min(next_scan, write_at if pending else next_scan) - now)
                if self._stopping:
                    return
            if time.monotonic() >= next_scan:
                self._adopt()
                next_scan = time.monotonic() + ORPHAN_SCAN_S
                with self._cond:
                    idle = self._committed == self._appended and not self._orphans
                if idle:  # nothing to write: a ping keeps status()'s db_reachable current
                    self._ping()
                    continue
            try:
                self._write()
            except Exception as err:  # noqa: BLE001 - the thread must outlive any one failure
                self._failed(err)
            else:
                with self._cond:
                    if self._db_ok is False:
                        log.warning("the prediction log at %s answers again; journaled predictions written",
                                    self.url)
                    self._db_ok, self._last_error, self._backoff = True, None, 0.0
                    self._last_write = datetime.now(UTC)
                    self._cond.notify_all()

    def _ping(self) -> None:
        reachable = self.db.ping()
        with self._cond:
            if reachable != self._db_ok:
                log.warning("the prediction log at %s %s", self.url, "answers again" if reachable
                            else "does not answer; predictions will be journaled")
            self._db_ok = reachable
            self._last_error = None if reachable else "the database does not answer"
            self._schema_ok = self._schema_ok and reachable

    def _adopt(self) -> None:
        try:
            orphans = self.journal.adopt_orphans()
        except OSError as err:
            log.warning("cannot look for journals of stopped servers in %s (%s)", self.journal.folder, err)
            return
        for orphan in orphans:
            if orphan.segments:
                log.warning("replaying %d prediction journal file(s) of a stopped server process",
                            len(orphan.segments))
                self._orphans.append(orphan)
            else:
                release(orphan.lock_path, orphan.lock_fd, remove=True)

    def _write(self) -> None:
        """Seal the current segment, then insert every sealed and adopted one, oldest first,
        deleting each after its last commit. Raises on any failure; done work stays done."""
        segment = self.journal.seal()
        if segment:
            self._sealed.append(segment)
        if not self._schema_ok:  # unreachable at start, or the table went away: (re)create it
            self.db.ensure_schema()
            self._schema_ok = True
        while self._sealed:
            self._replay(self._sealed[0].path)
            done = self._sealed.pop(0)
            with self._cond:
                self._committed += done.rows
                self._cond.notify_all()
        while self._orphans:
            orphan = self._orphans[0]
            while orphan.segments:
                self._replay(orphan.segments[0])
                orphan.segments.pop(0)
            release(orphan.lock_path, orphan.lock_fd, remove=True)
            with self._cond:
                self._orphans.pop(0)
                self._cond.notify_all()

    def _replay(self, path: Path) -> None:
        """Insert a segment's rows, BATCH_ROWS a transaction, then delete the file."""
        batch: list[dict] = []
        try:
            for rows in read_segment(path):
                batch.extend(rows)
                if len(batch) >= BATCH_ROWS:
                    self.db.insert_new(batch, self._reject)
                    batch = []
        except FileNotFoundError:  # removed by hand: nothing left to write from it
            return
        if batch:
            self.db.insert_new(batch, self._reject)
        remove_segment(path)

    def _reject(self, row: dict, reason: str) -> None:
        self.journal.reject(row, reason)
        with self._cond:
            self._rejected += 1

    def _failed(self, err: Exception) -> None:
        reason = _reason(err) if isinstance(err, SQLAlchemyError) else str(err).splitlines()[0][:200]
        self._schema_ok = False  # check the table again before the next attempt
        # These files now stay on disk until the database answers: make them durable.
        _quietly(self.journal.sync, [s.path for s in self._sealed] +
                 [p for o in self._orphans for p in o.segments])
        with self._cond:
            if self._db_ok is not False:
                log.warning("cannot write to the prediction log at %s (%s); predictions are journaled "
                            "and written when it answers", self.url, reason)
            self._db_ok, self._last_error = False, reason
            self._failures += 1
            self._backoff = min(max(2 * self._backoff, RETRY_MIN_S), RETRY_MAX_S)
            self._retry_at = time.monotonic() + self._backoff
            self._cond.notify_all()


_SCHEMA_LOCK_KEY = 0x636C6172_76697331  # "clarvis1": the advisory lock schema changes take


def _migrate(conn) -> None:
    """Bring a log made by an older clarivis up to this table: the uid column, then every index
    the table defines that the database lacks (CREATE INDEX on the existing rows)."""
    inspector = inspect(conn)
    if "uid" not in {c["name"] for c in inspector.get_columns(predictions.name)}:
        conn.execute(text(f"ALTER TABLE {predictions.name} ADD COLUMN uid VARCHAR(32)"))
    present = {ix["name"] for ix in inspector.get_indexes(predictions.name)}
    for index in sorted(predictions.indexes, key=lambda ix: ix.name):
        if index.name not in present:
            index.create(conn)


def _is_already_exists(err: SQLAlchemyError) -> bool:
    text_ = str(getattr(err, "orig", err)).lower()
    return "already exists" in text_ or "duplicate column" in text_


def _row(e: LoggedPrediction, store_images: bool) -> dict:
    """The database row of an entry, with its new uid. Refuses what the table would refuse, so
    nothing in a journal can block the writer."""
    for name, limit in TEXT_LIMITS.items():
        value = getattr(e, name)
        if not isinstance(value, str) or len(value) > limit:
            raise ClarivisError(f"cannot log a prediction whose {name} is {str(value)[:40]!r}: "
                                f"it must be text of at most {limit} characters")
    if not isinstance(e.time, datetime):
        raise ClarivisError(f"cannot log a prediction whose time is {e.time!r}; pass a datetime")
    if not (math.isfinite(e.confidence) and math.isfinite(e.latency_ms)):
        raise ClarivisError(f"cannot log a prediction with confidence {e.confidence} and latency "
                            f"{e.latency_ms} ms: both must be finite numbers")
    ood = None if e.ood_score is None or not math.isfinite(e.ood_score) else float(e.ood_score)
    return {"time": to_naive_utc(e.time), "model_version": e.model_version, "label": e.label,
            "confidence": float(e.confidence), "latency_ms": float(e.latency_ms),
            "width": int(e.width), "height": int(e.height), "num_bytes": int(e.num_bytes),
            "sha256": e.sha256, "ood_score": ood, "image": e.image if store_images else None,
            "uid": uuid.uuid4().hex}


def _default_journal_root(url: URL) -> Path | None:
    """Beside a SQLite file; None (a temporary folder) for an in-memory one; for a server
    database, this user's state folder ($XDG_STATE_HOME or ~/.local/state)."""
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:"):
            return None
        return Path(database).expanduser().resolve().parent / JOURNAL_DIR
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "clarivis" / JOURNAL_DIR


def _identity(url: URL) -> str:
    """What names one database, whatever the driver or password in its URL."""
    if url.get_backend_name() == "sqlite":
        return str(Path(url.database or ":memory:").expanduser().resolve())
    u = url
    return f"{u.get_backend_name()}://{u.username or ''}@{u.host or ''}:{u.port or ''}/{u.database or ''}"


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except OSError as err:
        log.warning("prediction journal: %s", err)


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
    elif parsed.get_backend_name() == "postgresql":
        # pre_ping: after a database restart the pool's connections are dead; test each one
        # before use (one round trip) instead of failing the first write after every outage.
        kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": PG_CONNECT_TIMEOUT_S}}
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
    lines = str(orig if orig is not None else err).strip().splitlines()
    return (lines[0] if lines else err.__class__.__name__)[:200]
