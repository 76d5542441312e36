"""The drift monitor on synthetic prediction logs and a hand-written bundle (no training)."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from clarivis.errors import ClarivisError
from clarivis.serve.monitor import (
    PSI_SIGNIFICANT,
    ServiceMonitor,
    bundle_info,
    monitor_report,
    parse_since,
    psi,
    write_review_csv,
)
from clarivis.serve.predlog import LoggedPrediction, PredictionLog

NOW = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)
CLASSES = ["cat", "dog", "fox"]
SHARES = [0.5, 0.3, 0.2]
# Baseline confidence: 200 validation images, most above 0.8 (edges 0, 0.1, ..., 1).
CONF_COUNTS = [0, 0, 0, 0, 10, 10, 20, 30, 50, 80]


def make_bundle(root: Path, baseline: bool = True) -> Path:
    """A bundle folder with config.json written by hand and placeholder weights."""
    folder = root / "run" / "model"
    folder.mkdir(parents=True)
    config = {"architecture": "test_resnet", "num_classes": 3, "class_names": CLASSES,
              "input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3,
              "ood": {"score": "energy", "threshold": -2.0, "accept_rate": 0.95},
              "baseline": {"num_images": 200, "class_distribution": SHARES,
                           "confidence_histogram": {"edges": np.linspace(0, 1, 11).tolist(),
                                                    "counts": CONF_COUNTS}} if baseline else {}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def baseline_confidences(n: int, rng) -> np.ndarray:
    """Confidences drawn from the baseline histogram (uniform inside each bin)."""
    bins = rng.choice(10, size=n, p=np.array(CONF_COUNTS) / sum(CONF_COUNTS))
    return (bins + rng.uniform(0.01, 0.99, n)) / 10


def log(url: str, labels, *, version: str, confidences=None, latencies=None, times=None) -> None:
    n = len(labels)
    rng = np.random.default_rng(0)
    confidences = baseline_confidences(n, rng) if confidences is None else confidences
    latencies = rng.uniform(5, 50, n) if latencies is None else latencies
    times = [NOW - timedelta(minutes=i) for i in range(n)] if times is None else times
    rows = enumerate(zip(labels, confidences, latencies, times, strict=True))
    with PredictionLog(url) as db:
        db.record([LoggedPrediction(time=t, model_version=version, label=lbl, confidence=float(c),
                                    latency_ms=float(ms), width=32, height=32, num_bytes=100,
                                    sha256=f"{i:064x}")
                   for i, (lbl, c, ms, t) in rows])


@pytest.fixture
def bundle(tmp_path) -> tuple[Path, str, str]:
    folder = make_bundle(tmp_path)
    return folder, bundle_info(folder)[2], f"sqlite:///{(tmp_path / 'log.db').as_posix()}"


def labels_with_shares(shares, n: int) -> list[str]:
    return [name for name, s in zip(CLASSES, shares, strict=True) for _ in range(round(s * n))]


def test_no_drift_when_live_matches_the_baseline(bundle):
    folder, version, url = bundle
    log(url, labels_with_shares(SHARES, 1000), version=version)
    report = monitor_report(folder, url, now=NOW)
    drift = report["drift"]
    assert report["total_predictions"] == 1000 and drift["num_predictions"] == 1000
    assert drift["psi"] == pytest.approx(0, abs=1e-9)
    assert drift["chi_square"]["p_value"] > 0.99
    assert drift["ks"]["p_value"] > 0.01  # same confidence distribution
    assert drift["flags"] == [] and report["flags"] == []
    json.dumps(report)  # the --json file and /v1/monitor need plain JSON


def test_strong_shift_is_flagged(bundle):
    folder, version, url = bundle
    log(url, labels_with_shares([0.1, 0.3, 0.6], 1000), version=version,
        confidences=np.full(1000, 0.45))  # and confidence collapses
    drift = monitor_report(folder, url, now=NOW)["drift"]
    assert drift["psi"] > PSI_SIGNIFICANT and drift["chi_square"]["p_value"] < 0.01
    checks = {f["check"]: f["level"] for f in drift["flags"]}
    assert checks == {"psi": "significant", "chi_square": "significant", "ks": "significant"}


def test_psi_by_hand():
    live, base = np.array([0.6, 0.25, 0.15]), np.array(SHARES)
    expected = float(np.sum((live - base) * np.log(live / base)))
    assert psi(live, base) == pytest.approx(expected, rel=1e-3)
    assert psi(np.array([0.0, 0.5, 0.5]), np.array([0.0, 0.5, 0.5])) == pytest.approx(0)  # finite
    assert psi(np.array([0.1, 0.5, 0.4]), np.array([0.0, 0.5, 0.5])) > 0.5  # a class new in live traffic


def test_moderate_psi_is_a_moderate_flag(bundle):
    folder, version, url = bundle
    log(url, labels_with_shares([0.35, 0.35, 0.30], 1000), version=version)
    drift = monitor_report(folder, url, now=NOW)["drift"]
    assert 0.1 < drift["psi"] < 0.2
    assert {"check": "psi", "level": "moderate"}.items() <= drift["flags"][0].items()


def test_few_predictions_give_numbers_but_no_flags(bundle):
    folder, version, url = bundle
    log(url, ["fox"] * 10, version=version)
    drift = monitor_report(folder, url, now=NOW)["drift"]
    assert drift["psi"] > PSI_SIGNIFICANT and drift["flags"] == []


def test_latency_percentiles_match_numpy(bundle):
    folder, version, url = bundle
    latencies = np.random.default_rng(1).lognormal(3, 0.5, 300)
    log(url, labels_with_shares(SHARES, 300), version=version, latencies=latencies)
    lat = monitor_report(folder, url, now=NOW)["latency_ms"]
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    assert (lat["p50"], lat["p95"], lat["p99"]) == pytest.approx((p50, p95, p99))
    assert lat["mean"] == pytest.approx(latencies.mean())


def test_since_filters_the_window(bundle):
    folder, version, url = bundle
    times = [NOW - timedelta(hours=h) for h in range(72)]  # one prediction an hour for 3 days
    log(url, ["cat"] * 72, version=version, times=times)
    assert monitor_report(folder, url, now=NOW)["total_predictions"] == 72
    day = monitor_report(folder, url, "24h", now=NOW)
    assert day["total_predictions"] == 25  # hours 0..24, the start inclusive
    assert day["window"]["start"] == (NOW - timedelta(hours=24)).isoformat()
    assert day["volume"]["bucket"] == "hour" and sum(b["count"] for b in day["volume"]["buckets"]) == 25
    iso = monitor_report(folder, url, "2024-05-09T12:00:00Z", now=NOW)
    assert iso["total_predictions"] == 25
    whole = monitor_report(folder, url, "7d", now=NOW)
    assert whole["volume"]["bucket"] == "day" and len(whole["volume"]["buckets"]) == 8
    assert sum(b["count"] for b in whole["volume"]["buckets"]) == 72


def test_parse_since():
    assert parse_since("24h", NOW) == NOW - timedelta(hours=24)
    assert parse_since("7d", NOW) == NOW - timedelta(days=7)
    assert parse_since(" 30m ", NOW) == NOW - timedelta(minutes=30)
    assert parse_since("2024-05-01") == datetime(2024, 5, 1, tzinfo=UTC)
    assert parse_since("2024-05-01T14:00+02:00") == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert parse_since(None) is None
    for bad in ("yesterday", "24x", "-3d", "2024-13-01"):
        with pytest.raises(ClarivisError, match="24h"):
            parse_since(bad, NOW)


def test_review_queue_is_lowest_confidence_first_and_exported(bundle, tmp_path):
    folder, version, url = bundle
    confidences = np.random.default_rng(2).uniform(0.3, 1.0, 50)
    log(url, labels_with_shares(SHARES, 50), version=version, confidences=confidences)
    report = monitor_report(folder, url, now=NOW, review_limit=10)
    queue = report["review_queue"]
    assert [r["confidence"] for r in queue] == pytest.approx(sorted(confidences)[:10])
    assert {"time", "sha256", "label", "confidence"} <= queue[0].keys()
    path = write_review_csv(report, tmp_path / "queue.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["confidence"]) for r in rows] == pytest.approx(sorted(confidences)[:10])
    assert rows[0]["sha256"] == queue[0]["sha256"] and rows[0]["has_image"] == "False"


def test_empty_log_is_a_valid_report(bundle, tmp_path):
    folder, _, url = bundle
    report = monitor_report(folder, url, now=NOW)
    assert report["total_predictions"] == 0 and report["drift"] is None and report["notes"]
    assert not (tmp_path / "log.db").exists()  # looking does not create a log
    log(url, ["cat"], version="other")
    report = monitor_report(folder, url, "1h", now=NOW + timedelta(days=1))
    assert report["total_predictions"] == 0 and "no predictions in this window" in report["notes"]
    json.dumps(report)


def test_other_versions_are_counted_but_not_drift(bundle):
    folder, version, url = bundle
    log(url, ["fox"] * 40, version="old")
    log(url, labels_with_shares(SHARES, 100), version=version)
    report = monitor_report(folder, url, now=NOW)
    assert report["total_predictions"] == 140 and report["current_version_predictions"] == 100
    assert report["versions"] == {"old": 40, version: 100}
    assert report["drift"]["num_predictions"] == 100 and report["drift"]["psi"] < 1e-9


def test_unknown_rate_and_its_flag(bundle):
    folder, version, url = bundle
    labels = labels_with_shares(SHARES, 70) + ["unknown"] * 30
    log(url, labels, version=version)
    report = monitor_report(folder, url, now=NOW)
    assert report["unknown_rate"] == pytest.approx(0.3)
    assert report["drift"]["num_predictions"] == 70  # unknown answers have no class
    assert [f["check"] for f in report["flags"]] == ["unknown_rate"]


def test_bundle_without_baseline(tmp_path):
    folder = make_bundle(tmp_path, baseline=False)
    url = f"sqlite:///{(tmp_path / 'log.db').as_posix()}"
    log(url, ["cat"] * 50, version=bundle_info(folder)[2])
    report = monitor_report(folder, url, now=NOW)
    assert report["total_predictions"] == 50 and report["drift"] is None
    assert any("baseline" in note for note in report["notes"])
    assert report["confidence"]["baseline_counts"] is None


def test_default_log_beside_the_bundle(bundle, monkeypatch):
    folder, version, _ = bundle
    monkeypatch.delenv("CLARIVIS_DB_URL", raising=False)
    with PredictionLog.for_model(folder) as db:
        db.record([LoggedPrediction(time=NOW, model_version=version, label="cat", confidence=0.9,
                                    latency_ms=1, width=1, height=1, num_bytes=1, sha256="0" * 64)])
    assert monitor_report(folder.parent, now=NOW)["total_predictions"] == 1  # the run folder works too


def test_version_and_unknown_label_match_the_torch_side(bundle):
    from clarivis.evaluate.ood import UNKNOWN_LABEL as OOD_UNKNOWN
    from clarivis.serve.monitor import UNKNOWN_LABEL
    from clarivis.spec import bundle_version

    folder, version, _ = bundle
    assert version == bundle_version(folder) and UNKNOWN_LABEL == OOD_UNKNOWN


def test_not_a_bundle(tmp_path):
    with pytest.raises(ClarivisError, match="ModelBundle"):
        monitor_report(tmp_path)


def test_absurd_since_is_a_user_error(bundle):
    folder, _, url = bundle
    for bad in ("99999999d", "9" * 400 + "d", "0001-01-01", "2999-01-01", "11y"):
        with pytest.raises(ClarivisError, match="since") as info:
            monitor_report(folder, url, bad, now=NOW)
        assert "\n" not in str(info.value)
    assert parse_since("3650d", NOW) == NOW - timedelta(days=3650)  # ten years back is fine


def test_histogram_and_time_buckets_match_numpy(bundle):
    """The SQL bins and buckets give numpy's figures, values on the bin edges included."""
    folder, version, url = bundle
    rng = np.random.default_rng(3)
    conf = np.concatenate([np.linspace(0, 1, 11), rng.uniform(0.2, 1.0, 289)])  # every edge once
    times = [NOW - timedelta(minutes=int(m)) for m in rng.integers(0, 47 * 60, conf.size)]
    log(url, labels_with_shares(SHARES, 300), version=version, confidences=conf, times=times)
    report = monitor_report(folder, url, "48h", now=NOW)
    edges = np.linspace(0, 1, 11)
    assert report["confidence"]["live_counts"] == np.histogram(conf, bins=edges)[0].tolist()
    assert report["confidence"]["mean"] == pytest.approx(conf.mean())
    hours = np.array([(NOW - t).total_seconds() for t in times])
    for bucket in report["confidence"]["over_time"]:
        start = datetime.fromisoformat(bucket["start"])
        inside = conf[[start <= t < start + timedelta(hours=1) for t in times]]
        assert bucket["count"] == inside.size
        if inside.size:
            assert bucket["mean"] == pytest.approx(inside.mean())
            assert abs(bucket["p10"] - np.percentile(inside, 10)) <= 0.01  # read off 0.01-wide bins
    assert sum(b["count"] for b in report["volume"]["buckets"]) == 300 and hours.max() < 48 * 3600


def test_client_report_names_no_server_path(bundle, tmp_path):
    folder, version, url = bundle
    log(url, labels_with_shares(SHARES, 50), version=version)
    report = monitor_report(folder, url, now=NOW, for_client=True)
    assert "model_dir" not in report and report["db"] == "sqlite:///log.db"
    assert str(tmp_path) not in json.dumps(report)
    assert report["total_predictions"] == 50
    empty = monitor_report(folder, f"sqlite:///{tmp_path / 'none.db'}", now=NOW, for_client=True)
    assert str(tmp_path) not in json.dumps(empty)  # the "no log yet" note too


def test_service_monitor_counts_what_its_log_just_recorded(bundle, tmp_path):
    folder, version, url = bundle
    with PredictionLog(url) as db:
        monitor = ServiceMonitor(folder, db, version=version)
        db.record([LoggedPrediction(time=NOW - timedelta(minutes=i), model_version=version, label="cat",
                                    confidence=0.9, latency_ms=5, width=1, height=1, num_bytes=1,
                                    sha256=f"{i:064x}") for i in range(12)])
        report = monitor.report(now=NOW)  # written first, within its flush wait
        assert report["total_predictions"] == 12 and report["latency_ms"]["p50"] == 5
        assert report["prediction_log"]["db_reachable"] is True
        assert report["prediction_log"]["pending_rows"] == 0
        assert str(tmp_path) not in json.dumps(report) and "model_dir" not in report
        with pytest.raises(ClarivisError, match="since"):
            monitor.report("99999999d", now=NOW)


def test_same_report_on_sqlite_and_postgresql(bundle, postgres_url):
    folder, version, url = bundle
    rng = np.random.default_rng(4)
    n = 400
    labels = [str(x) for x in rng.choice(CLASSES + ["unknown"], size=n, p=[0.4, 0.3, 0.2, 0.1])]
    kwargs = dict(version=version, confidences=rng.uniform(0.3, 1, n), latencies=rng.lognormal(3, 0.5, n),
                  times=[NOW - timedelta(minutes=int(m)) for m in rng.integers(0, 5 * 1440, n)])
    reports = []
    for db_url in (url, postgres_url):
        log(db_url, labels, **kwargs)
        log(db_url, ["fox"] * 20, version="old")
        reports.append({since: monitor_report(folder, db_url, since, now=NOW, review_limit=5)
                        for since in (None, "24h", "3d")})
    for since, lite in reports[0].items():
        pg = reports[1][since]
        for key in ("db", "model_dir"):
            lite.pop(key), pg.pop(key)
        for row in lite["review_queue"] + pg["review_queue"]:
            row.pop("id")
        assert_same(json.loads(json.dumps(lite)), json.loads(json.dumps(pg)), since)


def assert_same(a, b, where) -> None:
    """Equal JSON, floats to 1e-9 (the two databases sum in different orders)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), where
    else:
        assert a == b, where
