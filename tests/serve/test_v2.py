"""The Open Inference Protocol (KServe v2) over real HTTP: metadata, health, inference on encoded
images (BYTES) and preprocessed pixels (FP32), the protocol's {"error"} bodies, and the same
batcher, limits and prediction log as /v1/predict."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from tests.serve.live import png_bytes, running_server

from clarivis.classifier import Classifier
from clarivis.runtime import RuntimePreprocess, normalize, resize
from clarivis.serve.app import create_app
from clarivis.serve.backends import load_backend
from clarivis.serve.batching import MicroBatcher
from clarivis.serve.predlog import PredictionLog
from clarivis.serve.service import default_model_name
from clarivis.spec import read_bundle_config

KEY = "v2-key"


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    """(base URL, database URL, model name, app) of a server without a key, 4 images a request."""
    db = f"sqlite:///{tmp_path_factory.mktemp('v2db') / 'log.db'}"
    app = create_app(tiny_bundle, db_url=db, max_files=4)
    with running_server(app) as url:
        wait_ready(url)
        yield url, db, default_model_name(tiny_bundle), app


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server[0], timeout=30) as c:
        yield c


def wait_ready(url: str, headers: dict | None = None) -> None:
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/v2/health/ready", headers=headers).status_code != 200:
        assert time.monotonic() < deadline, "the server never became ready"
        time.sleep(0.05)


def logged(server) -> list:
    """The log's rows, once the serving app's writer thread has inserted every answered request's."""
    url, db, _, app = server
    assert app.state.service.log.flush(10), "the service's prediction log did not flush in 10 s"
    with PredictionLog(db) as log:
        return log.query()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_input(*images: bytes) -> dict:
    return {"name": "image", "datatype": "BYTES", "shape": [len(images)], "data": [b64(i) for i in images]}


def pixels_of(tiny_bundle, *images: bytes) -> np.ndarray:
    """The bundle's preprocessing in numpy (clarivis.runtime): what a v2 client sends as FP32."""
    pp = RuntimePreprocess(**read_bundle_config(tiny_bundle).preprocess.to_dict())
    decoded = [resize(Image.open(io.BytesIO(i)).convert("RGB"), pp) for i in images]
    return normalize(np.stack(decoded), pp)


def output(body: dict, name: str) -> np.ndarray | list:
    (out,) = [o for o in body["outputs"] if o["name"] == name]
    data = out["data"]
    return np.asarray(data).reshape(out["shape"]) if out["datatype"] == "FP32" else data


def assert_v2_error(response: httpx.Response, status: int, fragment: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    assert "\n" not in body["error"] and "Traceback" not in response.text
    assert fragment.lower() in body["error"].lower(), body["error"]


RED, BLUE = png_bytes((220, 20, 20)), png_bytes((20, 20, 220), size=(30, 44))


def test_server_metadata_and_health(client):
    meta = client.get("/v2").json()
    assert meta["name"] == "clarivis" and meta["version"] and meta["extensions"] == []
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_model_metadata(client, server):
    name = server[2]
    meta = client.get(f"/v2/models/{name}").json()
    version = meta["versions"][0]
    assert meta["name"] == name and len(version) == 12 and meta["platform"] == "pytorch_clarivis"
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("image", "BYTES", [-1]), ("pixels", "FP32", [-1, 3, 32, 32])]
    assert {t["name"]: t["shape"] for t in meta["outputs"]} == {
        "label": [-1], "confidence": [-1], "probabilities": [-1, 2], "top_labels": [-1, -1],
        "top_probabilities": [-1, -1]}
    p = meta["parameters"]
    assert p["class_names"] == ["blue", "red"] and p["img_size"] == 32 and p["model_version"] == version
    described = meta["inputs"][1]["parameters"]["description"]
    assert "[N, 3, 32, 32]" in described and str(p["mean"]) in described and "divided by 255" in described
    assert client.get(f"/v2/models/{name}/versions/{version}").json() == meta
    assert client.get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}
    assert client.get(f"/v2/models/{name}/versions/{version}/ready").json()["ready"] is True
    assert_v2_error(client.get("/v2/models/resnet-9000"), 404, f"this server serves '{name}'")
    assert_v2_error(client.get("/v2/models/resnet-9000/ready"), 404, name)
    assert_v2_error(client.get(f"/v2/models/{name}/versions/abc/ready"), 404,
                    f"served version is '{version}'")


def test_infer_encoded_images(client, server):
    name, before = server[2], len(logged(server))
    body = {"id": "req-42", "inputs": [image_input(RED, BLUE)]}
    r = client.post(f"/v2/models/{name}/infer", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["id"] == "req-42" and answer["model_name"] == name and len(answer["model_version"]) == 12
    labels, confidence = output(answer, "label"), output(answer, "confidence")
    probabilities = output(answer, "probabilities")
    assert probabilities.shape == (2, 2) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert np.allclose(confidence, probabilities.max(axis=1), atol=1e-6)
    assert labels == [["blue", "red"][i] for i in probabilities.argmax(axis=1)]
    assert output(answer, "top_labels") == [labels[0], "blue" if labels[0] == "red" else "red",
                                            labels[1], "blue" if labels[1] == "red" else "red"]
    # the same answer as /v1/predict gives for the same files
    v1 = client.post("/v1/predict", files=[("file", ("r.png", RED)), ("file", ("b.png", BLUE))]).json()
    assert [p["label"] for p in v1["predictions"]] == labels
    assert [p["confidence"] for p in v1["predictions"]] == pytest.approx(list(confidence), abs=1e-6)
    rows = logged(server)
    assert len(rows) == before + 2 + 2  # v2's two and v1's two
    assert {row.sha256 for row in rows[-4:]} >= {hashlib.sha256(RED).hexdigest(),
                                                 hashlib.sha256(BLUE).hexdigest()}
    # outputs and top_k as asked; no id in, no id out
    r = client.post(f"/v2/models/{name}/versions/{answer['model_version']}/infer",
                    json={"inputs": [image_input(RED)], "parameters": {"top_k": 1},
                          "outputs": [{"name": "top_labels"}, {"name": "top_probabilities"}]})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert "id" not in answer
    assert [o["name"] for o in answer["outputs"]] == ["top_labels", "top_probabilities"]
    assert answer["outputs"][0]["shape"] == [1, 1] and answer["outputs"][0]["data"] == labels[:1]


def test_infer_preprocessed_pixels(client, server, tiny_bundle):
    name, before = server[2], len(logged(server))
    pixels = pixels_of(tiny_bundle, RED, BLUE)  # float32 (2, 3, 32, 32)
    nested = {"name": "pixels", "datatype": "FP32", "shape": [2, 3, 32, 32], "data": pixels.tolist()}
    flat = dict(nested, data=pixels.ravel().tolist())
    answers = []
    for tensor in (nested, flat):
        r = client.post(f"/v2/models/{name}/infer", json={"inputs": [tensor]})
        assert r.status_code == 200, r.text
        answers.append(output(r.json(), "probabilities"))
    assert np.array_equal(answers[0], answers[1])
    # the model on exactly these pixels, with the bundle's temperature
    classifier = Classifier.load(tiny_bundle, device="cpu")
    expected = classifier.predict_proba(torch.from_numpy(pixels)).numpy()
    assert np.allclose(answers[0], expected, atol=1e-5)
    # and close to what the server's own decoding of the same files gives (resize paths differ)
    from_files = output(client.post(f"/v2/models/{name}/infer",
                                    json={"inputs": [image_input(RED, BLUE)]}).json(), "probabilities")
    assert np.allclose(answers[0], from_files, atol=0.02)
    rows = logged(server)[before:before + 2]
    assert [(r.width, r.height, r.num_bytes) for r in rows] == [(32, 32, 3 * 32 * 32 * 4)] * 2
    assert rows[0].sha256 == hashlib.sha256(pixels[0].tobytes()).hexdigest() and rows[0].image is None


def _bad(**changes) -> dict:
    tensor = image_input(RED)
    body = {"inputs": [tensor]}
    for key, value in changes.items():
        (body if key in ("inputs", "parameters", "outputs") else tensor)[key] = value
    return body


def _pixels_tensor(shape, data) -> dict:
    return {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": shape, "data": data}]}


ZEROS = [0.0] * (3 * 32 * 32)


@pytest.mark.parametrize(("name", "body", "status", "fragment"), [
    ("not json", b"{nope", 400, "json"),
    ("no inputs field", {"id": "1"}, 400, "inputs"),
    ("no input", {"inputs": []}, 400, "exactly one input"),
    ("two inputs", {"inputs": [image_input(RED), image_input(RED)]}, 400, "exactly one input"),
    ("unknown input", _bad(name="photo"), 400, "unknown input 'photo'"),
    ("wrong datatype", _bad(datatype="FP32"), 400, "datatype BYTES"),
    ("shape and data disagree", _bad(shape=[2]), 400, "but 1 elements"),
    ("not base64", _bad(data=["%%% not base64 %%%"]), 400, "image[0]: not base64"),
    ("a number for an image", _bad(data=[17]), 400, "base64 string"),
    ("not an image", _bad(data=[b64(b"hello, this is text" * 10)]), 415, "image[0]: not an image"),
    ("empty image", _bad(data=[""]), 400, "image[0]: empty file"),
    ("too many images", _bad(shape=[5], data=[b64(RED)] * 5), 400, "1 to 4"),
    ("top_k zero", _bad(parameters={"top_k": 0}), 400, "top_k"),
    ("top_k text", _bad(parameters={"top_k": "three"}), 400, "top_k"),
    ("unknown output", _bad(outputs=[{"name": "logits"}]), 400, "unknown output 'logits'"),
    ("a multi-label output", _bad(outputs=[{"name": "label_mask"}]), 400, "unknown output 'label_mask'"),
    ("pixels of another size", _pixels_tensor([1, 3, 64, 64], [0.0] * (3 * 64 * 64)), 400, "[N, 3, 32, 32]"),
    ("pixels too few", _pixels_tensor([1, 3, 32, 32], ZEROS[:-1]), 400, "3071 values"),
    ("pixels not numbers", _pixels_tensor([1, 3, 32, 32], ["0.5"] * 3072), 400, "numbers only"),
    ("pixels booleans", _pixels_tensor([1, 3, 32, 32], [True] * 3072), 400, "numbers only"),
    ("pixels ragged", _pixels_tensor([1, 3, 32, 32], [[0.0], [0.0, 1.0]]), 400, "numbers only"),
    ("pixels beyond FP32", _pixels_tensor([1, 3, 32, 32], [1e39] + ZEROS[1:]), 400, "not finite"),
    ("pixels NaN", json.dumps(_pixels_tensor([1, 3, 32, 32], [float("nan")] + ZEROS[1:])).encode(),
     400, "not finite"),
])
def test_bad_requests_are_v2_errors(client, server, name, body, status, fragment):
    before = len(logged(server))
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) \
        else {"json": body}
    assert_v2_error(client.post(f"/v2/models/{server[2]}/infer", **kwargs), status, fragment)
    assert len(logged(server)) == before


def test_unknown_model_or_version_is_404(client, server):
    name = server[2]
    body = {"inputs": [image_input(RED)]}
    assert_v2_error(client.post("/v2/models/other/infer", json=body), 404, f"serves '{name}'")
    assert_v2_error(client.post(f"/v2/models/{name}/versions/v9/infer", json=body), 404, "served version")


def test_one_batch_scores_images_and_pixels_alike(tiny_bundle, tmp_path):
    """Service._run_batch: a batch mixing decoded images and FP32 arrays makes one call per kind
    and answers each payload in its place."""
    app = create_app(tiny_bundle, db_url=f"sqlite:///{tmp_path / 'b.db'}")
    service = app.state.service
    image = Image.open(io.BytesIO(RED)).convert("RGB")
    pixels = pixels_of(tiny_bundle, BLUE)[0]
    calls = []
    backend = service.backend
    original = backend.predict, backend.predict_pixels
    backend.predict = lambda x, top_k: calls.append(("images", len(x))) or original[0](x, top_k)
    backend.predict_pixels = lambda x, top_k: calls.append(("pixels", len(x))) or original[1](x, top_k)
    mixed = service._run_batch([(image, 2), (pixels, 1), (image, 2)])
    assert sorted(calls) == [("images", 2), ("pixels", 1)]
    alone = [service._run_batch([(image, 2)])[0], service._run_batch([(pixels, 2)])[0]]
    assert [m.label for m in mixed] == [alone[0].label, alone[1].label, alone[0].label]
    assert len(mixed[1].top_k) == 2  # the batch's largest k
    assert [p for _, p in mixed[1].top_k] == pytest.approx([p for _, p in alone[1].top_k], abs=1e-6)
    service.close()


def test_both_backends_score_pixels_alike(cnn_export, export_base):
    bundle, _ = cnn_export
    rng = np.random.default_rng(0)
    size = read_bundle_config(bundle).preprocess.img_size
    pixels = rng.normal(size=(3, 3, size, size)).astype(np.float32)
    torch_scored = load_backend("torch", bundle, "cpu").predict_pixels(pixels, top_k=2)
    onnx_scored = load_backend("onnx", bundle).predict_pixels(pixels, top_k=2)
    assert [s.label for s in torch_scored] == [s.label for s in onnx_scored]
    for t, o in zip(torch_scored, onnx_scored, strict=True):
        assert [lbl for lbl, _ in t.top_k] == [lbl for lbl, _ in o.top_k]
        assert [p for _, p in t.top_k] == pytest.approx([p for _, p in o.top_k], abs=1e-4)


def test_v2_liveness_is_open_and_the_rest_needs_the_key(tiny_bundle, tmp_path):
    app = create_app(tiny_bundle, api_key=KEY, db_url=f"sqlite:///{tmp_path / 'k.db'}")
    name = default_model_name(tiny_bundle)
    with running_server(app) as url, httpx.Client(base_url=url) as c:
        assert c.get("/v2/health/live").json() == {"live": True}
        for path in ("/v2", "/v2/health/ready", f"/v2/models/{name}", f"/v2/models/{name}/ready"):
            assert c.get(path).status_code == 401, path
        assert c.post(f"/v2/models/{name}/infer", json={"inputs": [image_input(RED)]}).status_code == 401
        wait_ready(url, headers={"X-API-Key": KEY})
        r = c.post(f"/v2/models/{name}/infer", json={"inputs": [image_input(RED)]},
                   headers={"X-API-Key": KEY})
        assert r.status_code == 200 and output(r.json(), "label")[0] in ("red", "blue")


def test_full_queue_is_a_v2_429_with_retry_after(tiny_bundle, tmp_path):
    """A model that takes 0.4 s an image and room for one waiting image: one request in the model,
    then three at once: one waits, two are refused at once with the protocol's error body."""
    app = create_app(tiny_bundle, db_url=f"sqlite:///{tmp_path / 'q.db'}")
    service, name = app.state.service, default_model_name(tiny_bundle)

    def slow_model(payloads):
        time.sleep(0.4)
        return service._run_batch(payloads)

    service.batcher = MicroBatcher(slow_model, max_batch=1, max_queue=1)  # started by the lifespan
    body = {"inputs": [image_input(RED)]}

    async def main(url: str):
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            while (await c.get("/v2/health/ready")).status_code != 200:
                await asyncio.sleep(0.05)
            first = asyncio.create_task(c.post(f"/v2/models/{name}/infer", json=body))
            await asyncio.sleep(0.1)  # in the model now
            others = [asyncio.create_task(c.post(f"/v2/models/{name}/infer", json=body)) for _ in range(3)]
            return [await first, *await asyncio.gather(*others)]

    with running_server(app) as url:
        responses = asyncio.run(main(url))
    assert sorted(r.status_code for r in responses) == [200, 200, 429, 429]
    for r in responses:
        if r.status_code == 429:
            assert_v2_error(r, 429, "waiting for the model (limit 1)")
            assert int(r.headers["retry-after"]) >= 1
