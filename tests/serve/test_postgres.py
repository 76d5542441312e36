"""The prediction log while its PostgreSQL server goes away and comes back: predictions keep
being recorded (journaled), nothing is lost or written twice, and the log says what is going on."""

from __future__ import annotations

import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, func, select

from clarivis.errors import ClarivisError
from clarivis.serve.predlog import LoggedPrediction, PredictionLog, predictions

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def entry(i: int) -> LoggedPrediction:
    return LoggedPrediction(time=T0 + timedelta(seconds=i), model_version="v1", label="red",
                            confidence=0.9, latency_ms=3.0, width=8, height=8, num_bytes=10,
                            sha256=f"{i:064x}")


def stored(url: str) -> tuple[int, int]:
    """(rows, distinct uids) in the database."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return tuple(conn.execute(select(func.count(), func.count(predictions.c.uid.distinct()))).one())
    finally:
        engine.dispose()


@contextmanager
def stopped(server):
    server.stop()
    try:
        yield
    finally:
        server.start()  # the session's server: the next test needs it


def test_predictions_are_journaled_through_an_outage(postgres_server, postgres_url, tmp_path):
    with PredictionLog(postgres_url, journal_dir=tmp_path / "j") as log:
        log.record([entry(i) for i in range(10)])
        assert log.flush(30) and log.status()["db_reachable"] is True
        with stopped(postgres_server):
            slowest = 0.0
            for i in range(10, 60, 5):  # 50 rows in 10 requests
                start = time.perf_counter()
                log.record([entry(j) for j in range(i, i + 5)])
                slowest = max(slowest, time.perf_counter() - start)
            assert slowest < 0.5  # a request never waits for the database
            assert log.flush(10) is False  # one attempt, failed
            status = log.status()
            assert status["db_reachable"] is False and status["pending_rows"] == 50
            assert status["accepting"] is True and status["last_error"] and "\n" not in status["last_error"]
            assert (tmp_path / "j").is_dir() and list((tmp_path / "j").rglob("*.jsonl"))
        assert log.flush(60)
        status = log.status()
        assert status["db_reachable"] is True and status["pending_rows"] == 0 and status["last_error"] is None
    assert stored(postgres_url) == (60, 60)


def test_close_during_an_outage_leaves_the_rest_for_the_next_start(postgres_server, postgres_url, tmp_path):
    log = PredictionLog(postgres_url, journal_dir=tmp_path / "j")
    log.record([entry(0)])
    assert log.flush(30)
    with stopped(postgres_server):
        log.record([entry(i) for i in range(1, 21)])
        start = time.perf_counter()
        log.close(timeout_s=2)
        assert time.perf_counter() - start < 15  # gives up after its timeout (plus a connect timeout)
    assert stored(postgres_url) == (1, 1)
    with PredictionLog(postgres_url, journal_dir=tmp_path / "j") as log:  # the next server start
        assert log.flush(30) and log.count() == 21
    assert stored(postgres_url) == (21, 21)
    assert list((tmp_path / "j").rglob("*.jsonl")) == []


def test_start_while_the_database_is_down(postgres_server, postgres_url, tmp_path):
    PredictionLog(postgres_url, journal_dir=tmp_path / "j").close()  # the table exists
    with stopped(postgres_server):
        with pytest.raises(ClarivisError, match="cannot open the prediction log") as info:
            PredictionLog(postgres_url, journal_dir=tmp_path / "j")  # require_db: fail at start
        assert "\n" not in str(info.value)
        log = PredictionLog(postgres_url, journal_dir=tmp_path / "j", require_db=False)
        assert log.status()["db_reachable"] is False
        log.record([entry(i) for i in range(5)])
    assert log.flush(60) and log.count() == 5
    log.close()


def test_new_database_created_by_the_writer_when_it_answers(postgres_server, postgres_url, tmp_path):
    """Started against an empty database that was down: the writer makes the table first."""
    with stopped(postgres_server):
        log = PredictionLog(postgres_url, journal_dir=tmp_path / "j", require_db=False)
        log.record([entry(0), entry(1)])
    assert log.flush(60) and log.count() == 2
    log.close()


def test_an_idle_log_notices_the_database_going_and_coming_back(postgres_server, postgres_url, tmp_path,
                                                                 monkeypatch):
    from clarivis.serve import predlog

    monkeypatch.setattr(predlog, "ORPHAN_SCAN_S", 0.2)  # the idle writer's ping interval

    def wait_for(reachable: bool) -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if log.status()["db_reachable"] is reachable:
                return True
            time.sleep(0.1)
        return False

    with PredictionLog(postgres_url, journal_dir=tmp_path / "j") as log:
        with stopped(postgres_server):
            assert wait_for(False) and log.status()["last_error"]
        assert wait_for(True) and log.status()["last_error"] is None
