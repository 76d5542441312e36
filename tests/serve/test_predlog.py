"""The prediction log on SQLite and PostgreSQL: round trip, images only on request, the journal
(outages, crashes, dead processes, several processes), the migration of older logs, URLs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, inspect, select, text

from clarivis.errors import ClarivisError
from clarivis.serve.predlog import (
    ENV_VAR,
    JOURNAL_DIR,
    LoggedPrediction,
    PredictionLog,
    default_db_url,
    predictions,
    public_url,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def entry(i: int = 0, version: str = "v1", **changes) -> LoggedPrediction:
    fields = dict(time=T0 + timedelta(minutes=i), model_version=version, label="red", confidence=0.9,
                  latency_ms=12.5, width=640, height=480, num_bytes=1234, sha256=f"{i:064x}",
                  ood_score=-1.5, image=b"\x89PNG fake bytes")
    return LoggedPrediction(**(fields | changes))


def uids(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(predictions.c.uid)).scalars())
    finally:
        engine.dispose()


def segments(folder) -> list:
    """Journal files left anywhere under a journal root."""
    return sorted(p.name for p in folder.rglob("*.jsonl") if p.name != "rejected.jsonl")


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{(tmp_path / 'log' / 'predictions.db').as_posix()}"


# ----------------------------------------------------------------------------- both databases


def test_round_trip(db_url, tmp_path):
    with PredictionLog(db_url, journal_dir=tmp_path / "j") as log:
        log.record([entry(2), entry(0, label="blue", ood_score=None), entry(1, version="v2")])
        assert log.count() == 3 and log.count("v1") == 2 and log.count("v2") == 1
        rows = log.query()
    assert [r.sha256 for r in rows] == [f"{i:064x}" for i in (0, 1, 2)]  # oldest first
    first = rows[0]
    assert first.time == T0 and first.time.tzinfo is not None  # UTC back, aware
    assert (first.label, first.confidence, first.latency_ms) == ("blue", 0.9, 12.5)
    assert (first.width, first.height, first.num_bytes, first.ood_score) == (640, 480, 1234, None)
    assert rows[2].ood_score == -1.5
    assert len(set(uids(db_url))) == 3 and all(len(u) == 32 for u in uids(db_url))
    assert segments(tmp_path / "j") == []  # all written: the journal is empty


def test_query_filters_by_time_and_version(db_url, tmp_path):
    with PredictionLog(db_url, journal_dir=tmp_path / "j") as log:
        log.record([entry(i, version="v1" if i % 2 else "v2") for i in range(10)])
        assert len(log.query(since=T0 + timedelta(minutes=5))) == 5
        assert len(log.query(model_version="v2")) == 5
        assert len(log.query(since=T0 + timedelta(minutes=5), model_version="v2")) == 2
        assert len(log.query(limit=3)) == 3


def test_times_are_stored_as_utc(db_url, tmp_path):
    plus2 = timezone(timedelta(hours=2))
    with PredictionLog(db_url, journal_dir=tmp_path / "j") as log:
        log.record([entry(time=datetime(2024, 5, 1, 14, 0, tzinfo=plus2)),
                    entry(time=datetime(2024, 5, 1, 12, 0))])  # naive is taken as UTC
        assert [r.time for r in log.query()] == [T0, T0]


def test_images_are_dropped_unless_store_images(db_url, tmp_path):
    with PredictionLog(db_url, journal_dir=tmp_path / "j") as log:
        log.record([entry(0)])
        assert log.query()[0].image is None
    with PredictionLog(db_url, journal_dir=tmp_path / "j", store_images=True) as log:
        log.record([entry(1)])
        assert log.flush(30)
        with log.engine.connect() as conn:
            images = conn.execute(select(predictions.c.image).order_by(predictions.c.id)).scalars().all()
    assert images == [None, b"\x89PNG fake bytes"]  # through the journal as base64 and back


def test_concurrent_writers_lose_nothing(db_url, tmp_path):
    with PredictionLog(db_url, journal_dir=tmp_path / "j") as log:
        errors: list[Exception] = []

        def write(worker: int) -> None:
            try:
                for i in range(50):
                    log.record([entry(worker * 1000 + i)])
            except Exception as err:  # noqa: BLE001 - surfaced by the assert below
                errors.append(err)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and log.count() == 400


def test_entries_no_database_would_take_are_refused_at_once(db_url, tmp_path):
    """Refused by record() (the request sees it), never journaled: a row the database refuses
    would otherwise block the writer forever."""
    with PredictionLog(db_url, journal_dir=tmp_path / "j") as log:
        for bad in (dict(label=None), dict(label="x" * 256), dict(confidence=float("nan")),
                    dict(model_version=3)):
            with pytest.raises(ClarivisError, match="cannot log a prediction"):
                log.record([entry(0), entry(1, **bad)])  # all or none of a request's rows
        assert log.count() == 0 and log.status()["pending_rows"] == 0


def test_migrates_an_older_log_in_place(db_url, tmp_path):
    """A log written before the uid column and the monitor's indexes: they are added, old rows
    stay readable, and opening it again changes nothing."""
    (tmp_path / "log").mkdir()  # the SQLite file's folder
    engine = create_engine(db_url)
    pg = engine.dialect.name == "postgresql"
    with engine.begin() as conn:  # the table as clarivis 0.1 made it
        conn.execute(text(
            f"CREATE TABLE predictions (id {'BIGSERIAL' if pg else 'INTEGER'} PRIMARY KEY, "
            "time TIMESTAMP NOT NULL, model_version VARCHAR(64) NOT NULL, label VARCHAR(255) NOT NULL, "
            "confidence FLOAT NOT NULL, latency_ms FLOAT NOT NULL, width INTEGER NOT NULL, "
            "height INTEGER NOT NULL, num_bytes INTEGER NOT NULL, sha256 VARCHAR(64) NOT NULL, "
            f"ood_score FLOAT, image {'BYTEA' if pg else 'BLOB'})"))
        conn.execute(text("CREATE INDEX ix_predictions_time ON predictions (time)"))
        conn.execute(text("INSERT INTO predictions (time, model_version, label, confidence, latency_ms, "
                          "width, height, num_bytes, sha256) VALUES ('2024-05-01 11:00:00.000000', 'v0', "
                          "'old', 0.5, 3.0, 1, 1, 1, :sha)"), {"sha": "f" * 64})
    engine.dispose()
    for _ in range(2):
        with PredictionLog(db_url, journal_dir=tmp_path / "j") as log:
            log.record([entry(0)])
            rows = log.query()
    assert [r.label for r in rows] == ["old", "red", "red"] and rows[0].model_version == "v0"
    engine = create_engine(db_url)
    insp = inspect(engine)
    assert "uid" in {c["name"] for c in insp.get_columns("predictions")}
    names = {ix["name"] for ix in insp.get_indexes("predictions")}
    engine.dispose()
    assert {"uq_predictions_uid", "ix_predictions_monitor", "ix_predictions_confidence",
            "ix_predictions_latency_time", "ix_predictions_time"} <= names
    assert uids(db_url).count(None) == 1  # the old row has no uid, the two new ones do


# ----------------------------------------------------------------------------- the journal

CHILD = textwrap.dedent("""
    import os, sys, threading
    from datetime import UTC, datetime
    from clarivis.serve import predlog
    url, journal, mode, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    recorded = threading.Event()
    if mode == "crash-after-commit":  # all recorded, then dies after the INSERT commits, before
        real_write = predlog.PredictionLog._write  # the journal file is deleted
        predlog.PredictionLog._write = lambda self: (recorded.wait(), real_write(self))
        predlog.remove_segment = lambda path: os._exit(3)
    if mode == "die-unwritten":  # the writer never writes: everything stays in the journal
        predlog.PredictionLog._write = lambda self: None
    log = predlog.PredictionLog(url, journal_dir=journal)
    def write(worker):
        for i in range(n // 2):
            log.record([predlog.LoggedPrediction(time=datetime.now(UTC), model_version="v1",
                        label=f"w{worker}", confidence=0.5, latency_ms=1.0, width=1, height=1,
                        num_bytes=1, sha256=f"{os.getpid()}-{worker}-{i}")])
    threads = [threading.Thread(target=write, args=(w,)) for w in range(2)]
    for t in threads: t.start()
    for t in threads: t.join()
    recorded.set()
    if mode == "die-unwritten":
        os._exit(0)
    log.flush(60)
    log.close()
""")


def child(url: str, journal, mode: str, n: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, url, str(journal), mode, str(n)],
                            stderr=subprocess.PIPE, text=True)


def test_crash_between_commit_and_journal_delete_writes_nothing_twice(db_url, tmp_path):
    journal = tmp_path / "j"
    proc = child(db_url, journal, "crash-after-commit", 40)
    assert proc.wait(120) == 3, proc.stderr.read()
    assert len(uids(db_url)) > 0 and segments(journal)  # committed, and still journaled
    with PredictionLog(db_url, journal_dir=journal) as log:  # adopts the dead process's journal
        assert log.flush(30) and log.count() == 40
    assert len(set(uids(db_url))) == 40 and segments(journal) == []
    assert list(journal.rglob("*.lock")) == []


def test_journal_of_a_dead_process_is_replayed_at_start(db_url, tmp_path):
    journal = tmp_path / "j"
    proc = child(db_url, journal, "die-unwritten", 30)
    assert proc.wait(120) == 0, proc.stderr.read()
    assert uids(db_url) == [] and segments(journal)
    with PredictionLog(db_url, journal_dir=journal) as log:
        assert log.flush(30) and log.count() == 30
    assert segments(journal) == []


def test_two_processes_on_one_database_lose_nothing(db_url, tmp_path):
    """Two server workers: one database, one journal folder, each its own PredictionLog."""
    procs = [child(db_url, tmp_path / "j", "normal", 200) for _ in range(2)]
    for proc in procs:
        assert proc.wait(180) == 0, proc.stderr.read()
    assert len(uids(db_url)) == 400 and len(set(uids(db_url))) == 400
    assert segments(tmp_path / "j") == [] and list((tmp_path / "j").rglob("*.lock")) == []


def test_sqlite_locked_by_another_process_is_an_outage_too(url, tmp_path, monkeypatch):
    """A manual query holding the file locked: requests go on, the rows wait in the journal."""
    import sqlite3

    from clarivis.serve import predlog

    monkeypatch.setattr(predlog, "SQLITE_BUSY_TIMEOUT_S", 0.2)
    with PredictionLog(url, journal_dir=tmp_path / "j") as log:
        log.record([entry(0)])
        assert log.flush(30)
        other = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            start = time.perf_counter()
            log.record([entry(i) for i in range(1, 21)])
            assert time.perf_counter() - start < 0.5
            assert log.flush(10) is False
            assert log.status()["db_reachable"] is False and "locked" in log.status()["last_error"]
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert log.flush(30) and log.count() == 21
    assert len(set(uids(url))) == 21


def test_record_returns_before_the_database_writes(url, tmp_path, monkeypatch):
    """The request's cost is a line in the journal: with the writer held up, record() still
    returns at once and the row is on disk."""
    gate = threading.Event()
    original = PredictionLog._write

    def held(self):
        gate.wait(30)
        original(self)

    monkeypatch.setattr(PredictionLog, "_write", held)
    with PredictionLog(url, journal_dir=tmp_path / "j") as log:
        start = time.perf_counter()
        log.record([entry(0)])
        assert time.perf_counter() - start < 0.5
        assert log.status()["pending_rows"] == 1
        (segment,) = (tmp_path / "j").rglob("*.jsonl")
        assert f"{0:064x}" in segment.read_text()
        gate.set()
        assert log.flush(30) and log.count() == 1


def test_journals_of_two_databases_never_mix(tmp_path):
    a, b = (f"sqlite:///{(tmp_path / name).as_posix()}" for name in ("a.db", "b.db"))
    journal = tmp_path / "j"
    with PredictionLog(a, journal_dir=journal) as log_a, PredictionLog(b, journal_dir=journal) as log_b:
        log_a.record([entry(0)])
        log_b.record([entry(1), entry(2)])
        assert log_a.count() == 1 and log_b.count() == 2
    assert len([p for p in (tmp_path / "j").iterdir() if p.is_dir()]) == 2


def test_record_after_close_is_refused(url, tmp_path):
    log = PredictionLog(url, journal_dir=tmp_path / "j")
    log.close()
    with pytest.raises(ClarivisError, match="closed"):
        log.record([entry(0)])
    assert log.status()["accepting"] is False


# ----------------------------------------------------------------------------- SQLite specifics


def test_sqlite_file_and_journal_folder_are_created(url, tmp_path):
    with PredictionLog(url) as log:
        log.record([entry(0)])
        assert log.count() == 1
    assert (tmp_path / "log" / "predictions.db").is_file()  # the folder is created
    assert (tmp_path / "log" / JOURNAL_DIR).is_dir()  # the journal sits beside the file


def test_two_logs_on_one_file_write_together(url):
    """Two server processes share the file: each has its own engine and writer."""
    a, b = PredictionLog(url), PredictionLog(url)
    threads = [threading.Thread(target=lambda log=log: [log.record([entry(i)]) for i in range(40)])
               for log in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert a.flush(30) and b.flush(30) and a.count() == 80
    a.close()
    b.close()


def test_from_upload_hashes_the_bytes():
    e = LoggedPrediction.from_upload(b"abc", model_version="v1", label="red", confidence=0.5,
                                     latency_ms=3, width=2, height=2)
    assert e.sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert e.num_bytes == 3 and e.image == b"abc" and e.time.tzinfo is not None


def test_url_from_environment(monkeypatch, tmp_path):
    env_url = f"sqlite:///{(tmp_path / 'env.db').as_posix()}"
    monkeypatch.setenv(ENV_VAR, env_url)
    with PredictionLog() as log:
        log.record([entry()])
    assert (tmp_path / "env.db").is_file()
    assert default_db_url(tmp_path / "run" / "model") == env_url
    with PredictionLog.for_model(tmp_path / "run" / "model") as log:
        assert log.count() == 1


def test_default_is_a_file_in_the_run_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "config.json").write_text("{}")
    expected = f"sqlite:///{(tmp_path / 'run' / 'predictions.db').resolve().as_posix()}"
    assert default_db_url(tmp_path / "run" / "model") == expected
    assert default_db_url(tmp_path / "run") == expected  # the run folder itself
    with PredictionLog.for_model(tmp_path / "run" / "model") as log:
        log.record([entry()])
    assert (tmp_path / "run" / "predictions.db").is_file()
    assert (tmp_path / "run" / JOURNAL_DIR).is_dir()  # RUN/predlog-journal
    with pytest.raises(ClarivisError, match=ENV_VAR):
        PredictionLog()


def test_in_memory_sqlite_is_shared_between_threads():
    with PredictionLog("sqlite://") as log:
        t = threading.Thread(target=lambda: log.record([entry()]))
        t.start()
        t.join()
        assert log.count() == 1


def test_public_url_names_no_server_path(tmp_path):
    assert public_url(f"sqlite:///{tmp_path / 'run' / 'predictions.db'}") == "sqlite:///predictions.db"
    assert public_url("sqlite://") == "sqlite://"
    assert public_url("postgresql+psycopg://u:secret@db:5432/clarivis") == \
        "postgresql+psycopg://u:***@db:5432/clarivis"


@pytest.mark.parametrize("bad", ["not a url", "nosuchdb://host/db", "postgresql+nodriver://u:secret@h/db"])
def test_bad_url_says_what_to_use(bad):
    with pytest.raises(ClarivisError) as info:
        PredictionLog(bad)
    message = str(info.value)
    assert "\n" not in message and "sqlite:///" in message and "postgresql://" in message
    assert "secret" not in message  # passwords never reach messages


def test_journal_dir_from_the_environment(tiny_bundle, tmp_path, monkeypatch):
    """A container mounts the bundle read-only: $CLARIVIS_JOURNAL_DIR moves the journal."""
    monkeypatch.setenv("CLARIVIS_JOURNAL_DIR", str(tmp_path / "journal"))
    with PredictionLog.for_model(tiny_bundle, f"sqlite:///{tmp_path / 'log.db'}") as log:
        log.record([entry()])
        assert log.flush(10)
    assert (tmp_path / "journal").is_dir()
