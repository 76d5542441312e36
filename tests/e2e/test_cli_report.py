"""`clarivis audit` then `clarivis report` as a user runs them: every section of the page filled
and rendered in real Chromium; a folder that is not a run is refused in one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tests.browser import BROKEN_IMAGES_JS, chromium_page
from tests.e2e.test_cli import run_cli
from tests.report.test_report import SECTIONS
from tests.tiny import write_image


def with_unknown_class(manifest: Path, folder: Path) -> Path:
    """A copy of the manifest plus 20 noise images of a class the model never saw."""
    rows = list(csv.DictReader(manifest.open()))
    for i in range(20):
        path = write_image(folder / "noise" / f"n{i}.png", (128, 128, 128), size=(32, 32))
        rows.append({**rows[0], "path": str(path), "label": "noise", "split": "test"})
    out = folder / "manifest.csv"
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "path": str(manifest.parent / r["path"]) if r["label"] != "noise"
                          else r["path"]} for r in rows)
    return out


def test_report_after_audit_renders_every_section_in_chromium(lighting_run, tmp_path, capsys):
    result, manifest = lighting_run
    manifest = with_unknown_class(manifest, tmp_path / "test")
    code, out, err = run_cli(["audit", result.bundle_dir, manifest, "--robustness-images", "60",
                              "--adversarial", "--adversarial-images", "12",
                              "--json", tmp_path / "audit.json"], capsys)
    assert code == 0, err
    audit = json.loads((tmp_path / "audit.json").read_text())
    assert {"calibration", "subgroups", "robustness", "adversarial"} <= set(audit)
    assert audit["open_set"]["num_unknown"] == 20 and audit["open_set"]["auroc"]
    lighting = audit["subgroups"]["lighting"]
    assert lighting["dark"]["accuracy"] < lighting["bright"]["accuracy"]
    assert (result.run_dir / "audit.json").is_file()  # also beside the model, for the report
    code, out, _ = run_cli(["report", result.run_dir, "--out", tmp_path / "report.html"], capsys)
    assert code == 0 and "report.html" in out
    report = tmp_path / "report.html"
    with chromium_page() as page:
        page.goto(report.as_uri())
        rendered = page.evaluate(
            "Array.from(document.querySelectorAll('section.report-section')).map(s => "
            "[s.id, s.querySelector('h2').innerText, s.innerText.length, "
            "s.querySelectorAll('.missing').length])")
        assert [r[0] for r in rendered] == SECTIONS
        assert all(r[2] > len(r[1]) + 20 for r in rendered)  # a body, not just a heading
        missing = [r[0] for r in rendered if r[3] and r[0] not in ("data-check", "model-card")]
        assert missing == [], f"sections left empty after the audit: {missing}"
        assert page.evaluate("document.images.length") >= 4 + 8  # plots + gallery
        assert page.evaluate(BROKEN_IMAGES_JS) == 0
        flagged = page.locator("#subgroups .bad").all_inner_texts()
        assert "flagged" in flagged
        page.screenshot(path=str(tmp_path / "report.png"))


def test_report_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    code, _, err = run_cli(["report", tmp_path], capsys)
    assert code == 2 and "not a run folder" in err and "Traceback" not in err
