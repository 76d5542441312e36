"""`clarivis monitor` on a prediction log: JSON interface, review CSV, one-line errors."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta

from tests.e2e.test_cli import assert_one_line_error, run_cli
from tests.tiny import train_bundle

from clarivis.serve.predlog import LoggedPrediction, PredictionLog
from clarivis.spec import bundle_version


def test_monitor_reports_the_logged_traffic(tmp_path, capsys):
    bundle = train_bundle(tmp_path)
    version = bundle_version(bundle)
    start = datetime.now(UTC) - timedelta(hours=2)
    log = PredictionLog.for_model(bundle)
    log.record([LoggedPrediction.from_upload(bytes([i]), model_version=version,
                                             label="red" if i % 3 else "blue", confidence=0.5 + i / 100,
                                             latency_ms=10.0 + i, width=32, height=32,
                                             time=start + timedelta(minutes=i))
                for i in range(40)])
    log.close()
    code, out, err = run_cli(["monitor", bundle, "--json", tmp_path / "m.json", "--review-csv",
                              tmp_path / "queue.csv", "--review-limit", "5"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["total_predictions"] == 40 and report["model_version"] == version
    assert report["latency_ms"]["p50"] == 29.5
    rows = list(csv.DictReader((tmp_path / "queue.csv").open()))
    assert [float(r["confidence"]) for r in rows] == [0.5, 0.51, 0.52, 0.53, 0.54]
    assert "40 predictions" in out


def test_monitor_bad_since(tmp_path, capsys):
    bundle = train_bundle(tmp_path)
    capsys.readouterr()  # training's own output
    code, _, err = run_cli(["monitor", bundle, "--since", "last week"], capsys)
    assert_one_line_error(code, err, "24h")
    code, _, err = run_cli(["monitor", bundle, "--since", "99999999d"], capsys)  # no OverflowError
    assert_one_line_error(code, err, "days back")
