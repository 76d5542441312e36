"""A multi-label bundle in service: /v1/predict and v2 infer answer label sets, /v1/model and
the v2 metadata say task and thresholds, the log and the per-label counter hold each label of a
set, the page shows the set, and the monitor compares each label's live rate with validation.

The served bundles are untrained (tests/tiny.multilabel_bundle) with thresholds that fix the
answer whatever the weights: 0.0 always holds a class, 2.0 never does (a probability is <= 1)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from tests.e2e.test_cli import run_cli
from tests.serve.live import png_bytes, running_server
from tests.tiny import ML_CLASSES, multilabel_bundle, write_multilabel

from clarivis.runtime import RuntimePreprocess, normalize, resize
from clarivis.serve.app import create_app
from clarivis.serve.monitor import LABEL_RATE_CHANGE, label_counts, monitor_report, split_label_set
from clarivis.serve.predlog import LoggedPrediction, PredictionLog
from clarivis.serve.schemas import PredictResponse
from clarivis.serve.service import fit_label_set
from clarivis.spec import bundle_version, read_bundle_config

# ML_CLASSES is blue, green, red: blue and green always in the set, red never.
ALWAYS = [0.0, 0.0, 2.0]
NEVER = [2.0, 2.0, 2.0]
STATIC = Path(__file__).parents[2] / "src" / "clarivis" / "serve" / "static"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ml-serve")
    return {"always": multilabel_bundle(root / "always", thresholds=ALWAYS),
            "never": multilabel_bundle(root / "never", thresholds=NEVER)}


@pytest.fixture(scope="module")
def server(bundles, tmp_path_factory):
    """(base URL, database URL, app) serving the 'always' bundle."""
    db = f"sqlite:///{tmp_path_factory.mktemp('ml-db') / 'log.db'}"
    app = create_app(bundles["always"], db_url=db, max_files=4, expose_recent=True)
    with running_server(app) as url:
        yield url, db, app


def predict(url: str, *images: bytes, **params) -> dict:
    r = httpx.post(f"{url}/v1/predict", params=params, timeout=30,
                   files=[("file", (f"{i}.png", data)) for i, data in enumerate(images)])
    assert r.status_code == 200, r.text
    return r.json()


def infer(url: str, app, tensor: dict, outputs: list[str] | None = None) -> dict[str, dict]:
    body: dict = {"inputs": [tensor]}
    if outputs is not None:
        body["outputs"] = [{"name": n} for n in outputs]
    r = httpx.post(f"{url}/v2/models/{app.state.service.name}/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return {o["name"]: o for o in r.json()["outputs"]}


def image_tensor(*images: bytes) -> dict:
    return {"name": "image", "datatype": "BYTES", "shape": [len(images)],
            "data": [base64.b64encode(i).decode() for i in images]}


def counter(url: str) -> dict[str, float]:
    """clarivis_predictions_total by label, from /metrics."""
    out = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("clarivis_predictions_total{"):
            label = line.split('label="', 1)[1].split('"', 1)[0]
            out[label] = float(line.rsplit(" ", 1)[1])
    return out


def logged_labels(db: str, app) -> list[str]:
    assert app.state.service.log.flush(10)
    with PredictionLog(db) as log:
        return [r.label for r in log.query()]


def test_v1_predict_answers_each_image_its_label_set(server):
    url, db, app = server
    before_rows, before_counts = len(logged_labels(db, app)), counter(url)
    red, blue = png_bytes((220, 20, 20)), png_bytes((20, 20, 220), size=(30, 50))
    body = predict(url, red, blue)
    PredictResponse.model_validate(body)  # the documented answer
    for p in body["predictions"]:
        probability = {t["label"]: t["probability"] for t in p["top_k"]}
        assert len(p["top_k"]) == 3 and set(probability) == set(ML_CLASSES)
        assert [t["label"] for t in p["labels"]] == sorted(["blue", "green"], key=lambda c: -probability[c])
        assert all(t["probability"] == probability[t["label"]] for t in p["labels"])
        assert p["label"] == ";".join(t["label"] for t in p["labels"])
        assert p["confidence"] == max(probability.values())
    # top_k narrows the ranking, never the set
    (one,) = predict(url, red, top_k=1)["predictions"]
    assert len(one["top_k"]) == 1 and len(one["labels"]) == 2
    labels = logged_labels(db, app)[before_rows:]
    assert sorted(labels) == sorted(p["label"] for p in body["predictions"] + [one])
    after = counter(url)  # each label of a set counted once an image
    assert after["blue"] - before_counts.get("blue", 0) == 3
    assert after["green"] - before_counts.get("green", 0) == 3
    assert "red" not in after and "" not in after
    recent = httpx.get(f"{url}/v1/recent", params={"limit": 1}).json()["predictions"][0]
    assert recent["label"] == one["label"]


def test_model_info_and_v2_metadata_say_multilabel(server):
    url, _, app = server
    info = httpx.get(f"{url}/v1/model").json()
    assert info["task"] == "multilabel" and info["thresholds"] == ALWAYS
    assert info["temperatures"] == [1.0, 1.0, 1.0] and info["class_names"] == ML_CLASSES
    meta = httpx.get(f"{url}/v2/models/{app.state.service.name}").json()
    assert meta["parameters"]["task"] == "multilabel" and meta["parameters"]["thresholds"] == ALWAYS
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["label_mask"]["datatype"] == "BOOL" and outputs["label_mask"]["shape"] == [-1, 3]
    assert outputs["labels"]["datatype"] == "BYTES" and "sigmoid" in \
        outputs["probabilities"]["parameters"]["description"]


def test_v2_infer_gives_probabilities_the_set_and_its_mask(server, bundles):
    url, db, app = server
    images = [png_bytes((220, 20, 20)), png_bytes((20, 200, 20), size=(32, 32))]
    out = infer(url, app, image_tensor(*images))
    probs = np.asarray(out["probabilities"]["data"]).reshape(2, 3)
    assert out["probabilities"]["shape"] == [2, 3] and ((probs > 0) & (probs < 1)).all()
    assert out["label_mask"]["shape"] == [2, 3]
    assert out["label_mask"]["data"] == [True, True, False] * 2  # blue, green in; red out
    for n, (label, joined) in enumerate(zip(out["label"]["data"], out["labels"]["data"], strict=True)):
        assert label == joined
        assert joined.split(";") == sorted(["blue", "green"], key=lambda c: -probs[n, ML_CLASSES.index(c)])
    # The same images preprocessed by the client (FP32 pixels): the same sets and probabilities.
    pp = RuntimePreprocess(**read_bundle_config(bundles["always"]).preprocess.to_dict())
    pixels = normalize(np.stack([resize(Image.open(BytesIO(i)).convert("RGB"), pp) for i in images]), pp)
    by_pixels = infer(url, app, {"name": "pixels", "datatype": "FP32", "shape": list(pixels.shape),
                                 "data": pixels.ravel().tolist()})
    assert by_pixels["labels"]["data"] == out["labels"]["data"]
    assert np.allclose(by_pixels["probabilities"]["data"], out["probabilities"]["data"], atol=1e-5)
    # Only the outputs asked for
    assert set(infer(url, app, image_tensor(images[0]), ["label_mask"])) == {"label_mask"}


def test_an_empty_set_is_no_label_everywhere(bundles, tmp_path):
    db = f"sqlite:///{tmp_path / 'log.db'}"
    app = create_app(bundles["never"], db_url=db, expose_recent=True)
    with running_server(app) as url:
        (p,) = predict(url, png_bytes())["predictions"]
        assert p["labels"] == [] and p["label"] == "" and len(p["top_k"]) == 3
        out = infer(url, app, image_tensor(png_bytes()))
        assert out["labels"]["data"] == [""] and out["label_mask"]["data"] == [False] * 3
        assert logged_labels(db, app) == ["", ""]
        assert counter(url) == {"": 2.0}  # an image with no label still counts
        assert httpx.get(f"{url}/v1/recent").json()["predictions"][0]["label"] == ""
        report = httpx.get(f"{url}/v1/monitor").json()
        assert report["total_predictions"] == 2 and report["unknown_rate"] is None


def test_a_long_label_set_is_logged_as_whole_labels_that_fit():
    names = [f"label-{i:03d}-{'x' * 20}" for i in range(20)]  # 30 characters each
    joined = fit_label_set(";".join(names))
    assert len(joined) <= 255 and joined.split(";") == names[:8]
    assert fit_label_set("a;b") == "a;b"


# ----------------------------------------------------------------------------- the page

def test_page_has_the_label_set_line(server):
    page = httpx.get(server[0] + "/").text
    assert 'class="labelset"' in page


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_page_script_words_label_sets():
    """app.js's labelSetText and labelRatesText run in node, the page's DOM and fetch stubbed."""
    script = r"""
const vm = require("vm"), fs = require("fs");
const stub = new Proxy(function () {}, { get: (t, k) => k === Symbol.toPrimitive ? () => "" : stub,
                                          apply: () => stub, set: () => true });
const ctx = { document: stub, URL: stub, FormData: stub, console,
              fetch: () => Promise.reject(new Error("no server")) };
vm.createContext(ctx);
vm.runInContext(fs.readFileSync(process.argv[1], "utf8"), ctx);
const out = [
  ctx.labelSetText({ label: "cat", top_k: [] }),
  ctx.labelSetText({ labels: [] }),
  ctx.labelSetText({ labels: [{ label: "red", probability: 0.931 }, { label: "blue", probability: 0.5 }] }),
  ctx.labelRatesText({ task: "multilabel",
                       label_tests: [{ label: "red", live_rate: 0.4, baseline_rate: 0.25 }] }),
  ctx.labelRatesText({ psi: 0.1 }),
];
setTimeout(() => console.log(JSON.stringify(out)), 20);
"""
    result = subprocess.run(["node", "-e", script, str(STATIC / "app.js")], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [
        None, "no label above its threshold", "labels: red 93.1% · blue 50.0%", "red 40.0% / 25.0%", None]


# ----------------------------------------------------------------------------- the monitor

NOW = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)
MONITOR_CLASSES = ["cat", "dog", "fox"]
RATES = [0.5, 0.3, 0.2]  # validation: share of images holding each label


def monitor_bundle(root: Path) -> Path:
    """A multi-label bundle's config.json written by hand (the monitor reads no weights)."""
    folder = root / "run" / "model"
    folder.mkdir(parents=True)
    config = {"architecture": "test_resnet", "class_names": MONITOR_CLASSES, "input_size": [3, 32, 32],
              "mean": [0.5] * 3, "std": [0.5] * 3, "task": "multilabel", "thresholds": [0.5] * 3,
              "temperatures": [1.0] * 3,
              "baseline": {"num_images": 200, "label_rates": RATES,
                           "class_distribution": [r / sum(RATES) for r in RATES],
                           "confidence_histogram": {"edges": np.linspace(0, 1, 11).tolist(),
                                                    "counts": [0, 0, 0, 0, 10, 10, 20, 30, 50, 80]}}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def log_sets(url: str, sets: dict[str, int], version: str) -> None:
    rows, i = [], 0
    for joined, n in sets.items():
        for _ in range(n):
            rows.append(LoggedPrediction(time=NOW - timedelta(minutes=i), model_version=version, label=joined,
                                         confidence=0.9, latency_ms=10.0, width=32, height=32,
                                         num_bytes=100, sha256=f"{i:064x}"))
            i += 1
    with PredictionLog(url) as db:
        db.record(rows)


def test_label_counts_count_each_label_of_a_set():
    counts, images, other = label_counts({"cat;dog": 5, "dog": 2, "": 3, "cat;owl": 1}, MONITOR_CLASSES)
    assert counts.tolist() == [6, 7, 0] and images == 11 and other == ["owl"]
    # a class name holding the separator (a manifest read with another --label-sep) stays whole
    assert split_label_set("cat;a;b;owl", {"cat", "a;b", "a"}) == ["cat", "a;b", "owl"]
    assert split_label_set("", {"cat"}) == []


def test_monitor_compares_live_label_rates_with_validation(tmp_path, capsys):
    folder = monitor_bundle(tmp_path)
    url = f"sqlite:///{(tmp_path / 'log.db').as_posix()}"
    # 100 images: cat in 70, dog in 50, fox in 10, 20 with no label
    log_sets(url, {"cat;dog": 50, "cat": 20, "fox": 10, "": 20}, bundle_version(folder))
    report = monitor_report(folder, url, now=NOW)
    drift = report["drift"]
    assert drift["task"] == "multilabel" and drift["num_predictions"] == 100
    assert drift["live_rates"] == pytest.approx([0.7, 0.5, 0.1]) and drift["baseline_rates"] == RATES
    assert drift["no_label_rate"] == pytest.approx(0.2)
    assert [t["count"] for t in drift["label_tests"]] == [70, 50, 10]
    assert drift["live_shares"] == pytest.approx([70 / 130, 50 / 130, 10 / 130])
    assert report["unknown_rate"] is None and drift["chi_square"] is None
    # cat and dog moved by 20 points (p ~ 1e-4 and 1e-4 at 100 images); fox's 10 points are
    # within noise at Bonferroni's 0.01 / 3
    moved = {f["message"].split("'")[1] for f in report["flags"] if f["check"] == "label_rate"}
    assert moved == {"cat", "dog"}
    assert all(abs(t["live_rate"] - t["baseline_rate"]) > LABEL_RATE_CHANGE for t in drift["label_tests"]
               if t["label"] in moved)
    code, out, err = run_cli(["monitor", folder, "--db", url], capsys)
    assert code == 0, err
    assert "images with no label" in out and "20.0%" in out and "label 'cat' is predicted in 70.0%" in err


def test_monitor_is_quiet_when_label_rates_match_validation(tmp_path):
    folder = monitor_bundle(tmp_path)
    url = f"sqlite:///{(tmp_path / 'log.db').as_posix()}"
    # 200 images: cat in 100, dog in 60, fox in 40 (the validation rates)
    log_sets(url, {"cat;dog": 40, "cat;fox": 20, "cat": 40, "dog": 20, "fox": 20, "": 60},
             bundle_version(folder))
    report = monitor_report(folder, url, now=NOW)
    assert report["drift"]["live_rates"] == pytest.approx(RATES)
    assert not [f for f in report["flags"] if f["check"] in ("label_rate", "psi")]


@pytest.mark.slow  # the ONNX export, ~10 s
def test_onnx_backend_serves_the_same_sets(bundles, server, tmp_path):
    """The bundle exported to ONNX and served with --backend onnx: v1 sets and v2 pixels as torch's."""
    pytest.importorskip("onnxruntime")
    from clarivis.export import export_bundle

    folder = shutil.copytree(bundles["always"], tmp_path / "bundle")
    export_bundle(folder, device="cpu", check_data=write_multilabel(tmp_path / "check", 8).parent / "images")
    images = [png_bytes((220, 20, 20)), png_bytes((20, 20, 220), size=(30, 50))]
    reference = predict(server[0], *images)["predictions"]
    app = create_app(folder, db_url=f"sqlite:///{tmp_path / 'log.db'}", backend="onnx")
    with running_server(app) as url:
        body = predict(url, *images)
        assert body["backend"] == "onnx"
        for got, want in zip(body["predictions"], reference, strict=True):
            assert [t["label"] for t in got["labels"]] == [t["label"] for t in want["labels"]]
            assert [t["probability"] for t in got["labels"]] == pytest.approx(
                [t["probability"] for t in want["labels"]], abs=1e-4)
        pp = RuntimePreprocess(**read_bundle_config(folder).preprocess.to_dict())
        pixels = normalize(np.stack([resize(Image.open(BytesIO(i)).convert("RGB"), pp) for i in images]), pp)
        out = infer(url, app, {"name": "pixels", "datatype": "FP32", "shape": list(pixels.shape),
                               "data": pixels.ravel().tolist()})
        assert out["labels"]["data"] == [p["label"] for p in reference]
        assert out["label_mask"]["data"] == [True, True, False] * 2
