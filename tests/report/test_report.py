"""The HTML report: self-contained, every section present, written where asked. After an audit,
every section filled and rendered in real Chromium: tests/e2e/test_cli_report.py."""

from __future__ import annotations

import json
import re
import shutil

from tests.tiny import write_image

from clarivis import runs
from clarivis.report.html import write_report

SECTIONS = ["summary", "training", "metrics", "confusion", "calibration", "open-set", "top-losses",
            "data-check", "subgroups", "robustness", "adversarial", "model-card"]


def test_training_writes_a_report_that_names_the_missing_audit(lighting_run):
    result, _ = lighting_run
    html = (result.run_dir / "report.html").read_text()
    assert all(f'id="{s}"' in html for s in SECTIONS)
    assert "clarivis audit" in html  # the subgroup/robustness sections say how to fill them
    assert not re.search(r'src="(?!data:)', html)  # nothing loaded from a file or the network


def test_report_python_api_writes_where_asked(lighting_run, tmp_path):
    result, _ = lighting_run
    path = write_report(result.run_dir, out=tmp_path / "r.html", gallery=0)
    html = path.read_text()
    assert path == tmp_path / "r.html" and "Model card" in html and "Top losses" in html


def test_data_check_shows_both_images_of_a_pair(lighting_run, tmp_path):
    result, _ = lighting_run
    run = tmp_path / "run"
    shutil.copytree(result.run_dir, run)
    images = [write_image(tmp_path / f"{name}.png", (200, 40, 40)) for name in ("train", "test", "odd")]
    findings = [{"severity": "warning", "kind": "leak", "paths": [str(images[0]), str(images[1])],
                 "message": "2 look-alike images in test, train"},
                {"severity": "info", "kind": "size_outlier", "paths": [str(images[2])], "message": "big"}]
    (run / runs.DATA_CHECK).write_text(json.dumps({"findings": findings, "summary": {"similar_groups": 1}}))
    html = write_report(run, out=tmp_path / "r.html", gallery=0).read_text()
    rows = re.findall(r'<td class="thumbs">(.*?)</td>', html)
    assert [row.count('<img class="thumb"') for row in rows] == [2, 1]
