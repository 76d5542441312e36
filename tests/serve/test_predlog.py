"""The prediction log: round trip, images only on request, concurrent writers, URLs."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from clarivis.errors import ClarivisError
from clarivis.serve.predlog import ENV_VAR, LoggedPrediction, PredictionLog, default_db_url, predictions

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def entry(i: int = 0, version: str = "v1", **changes) -> LoggedPrediction:
    fields = dict(time=T0 + timedelta(minutes=i), model_version=version, label="red", confidence=0.9,
                  latency_ms=12.5, width=640, height=480, num_bytes=1234, sha256=f"{i:064x}",
                  ood_score=-1.5, image=b"\x89PNG fake bytes")
    return LoggedPrediction(**(fields | changes))


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{(tmp_path / 'log' / 'predictions.db').as_posix()}"


def test_round_trip_in_sqlite_file(url, tmp_path):
    with PredictionLog(url) as log:
        log.record([entry(2), entry(0, label="blue", ood_score=None), entry(1, version="v2")])
        assert log.count() == 3 and log.count("v1") == 2 and log.count("v2") == 1
        rows = log.query()
    assert (tmp_path / "log" / "predictions.db").is_file()  # the folder is created
    assert [r.sha256 for r in rows] == [f"{i:064x}" for i in (0, 1, 2)]  # oldest first
    first = rows[0]
    assert first.time == T0 and first.time.tzinfo is not None  # UTC back, aware
    assert (first.label, first.confidence, first.latency_ms) == ("blue", 0.9, 12.5)
    assert (first.width, first.height, first.num_bytes, first.ood_score) == (640, 480, 1234, None)
    assert rows[2].ood_score == -1.5


def test_query_filters_by_time_and_version(url):
    with PredictionLog(url) as log:
        log.record([entry(i, version="v1" if i % 2 else "v2") for i in range(10)])
        assert len(log.query(since=T0 + timedelta(minutes=5))) == 5
        assert len(log.query(model_version="v2")) == 5
        assert len(log.query(since=T0 + timedelta(minutes=5), model_version="v2")) == 2
        assert len(log.query(limit=3)) == 3


def test_times_are_stored_as_utc(url):
    plus2 = timezone(timedelta(hours=2))
    with PredictionLog(url) as log:
        log.record([entry(time=datetime(2024, 5, 1, 14, 0, tzinfo=plus2)),
                    entry(time=datetime(2024, 5, 1, 12, 0))])  # naive is taken as UTC
        assert [r.time for r in log.query()] == [T0, T0]


def test_images_are_dropped_unless_store_images(url):
    with PredictionLog(url) as log:
        log.record([entry(0)])
        assert log.query()[0].image is None
    with PredictionLog(url, store_images=True) as log:
        log.record([entry(1)])
        with log.engine.connect() as conn:
            images = conn.execute(select(predictions.c.image).order_by(predictions.c.id)).scalars().all()
    assert images == [None, b"\x89PNG fake bytes"]


def test_from_upload_hashes_the_bytes():
    e = LoggedPrediction.from_upload(b"abc", model_version="v1", label="red", confidence=0.5,
                                     latency_ms=3, width=2, height=2)
    assert e.sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert e.num_bytes == 3 and e.image == b"abc" and e.time.tzinfo is not None


def test_concurrent_writers_lose_nothing(url):
    with PredictionLog(url) as log:
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


def test_two_logs_on_one_file_write_together(url):
    """Two server processes share the file: each has its own engine (no shared lock)."""
    a, b = PredictionLog(url), PredictionLog(url)
    threads = [threading.Thread(target=lambda log=log: [log.record([entry(i)]) for i in range(40)])
               for log in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert a.count() == 80
    a.close()
    b.close()


def test_one_transaction_per_record(url):
    with PredictionLog(url) as log:
        with pytest.raises(ClarivisError, match="cannot write"):
            log.record([entry(0), entry(1, label=None)])  # NOT NULL fails: nothing is stored
        assert log.count() == 0


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
    with pytest.raises(ClarivisError, match=ENV_VAR):
        PredictionLog()


def test_in_memory_sqlite_is_shared_between_threads():
    with PredictionLog("sqlite://") as log:
        t = threading.Thread(target=lambda: log.record([entry()]))
        t.start()
        t.join()
        assert log.count() == 1


@pytest.mark.parametrize("bad", ["not a url", "nosuchdb://host/db", "postgresql+nodriver://u:secret@h/db"])
def test_bad_url_says_what_to_use(bad):
    with pytest.raises(ClarivisError) as info:
        PredictionLog(bad)
    message = str(info.value)
    assert "\n" not in message and "sqlite:///" in message and "postgresql://" in message
    assert "secret" not in message  # passwords never reach messages
