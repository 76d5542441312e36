"""The slim CPU image built from this checkout and run: /healthz, /readyz, a prediction that
matches the runtime's, the HEALTHCHECK's state, the non-root user, no torch, the SQLite log in
/data; then the container and image are removed. Skips, saying what was tried, where no container
engine can run a container here, no base image is in its local storage, or pip has no local
package index to build from (tests never download)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid

import pytest
from tests.container.engine import (
    DOCKER,
    ROOT,
    WHEELS_ENV,
    Engine,
    find_engine,
    health_status,
    image_size_mb,
    local_index,
    multipart,
    request,
)
from tests.tiny import held_out

from clarivis.runtime import Predictor

pytestmark = pytest.mark.slow  # builds an image: 1.5-3 minutes on 2 cores
MODEL_DIR = "/srv/clarivis/model"
# The CPU image holds no torch: 568 MB measured (venv 440 MB: scipy 145, onnxruntime 68, numpy
# 74); torch alone would add 700+ MB, so this bound catches it creeping in.
MAX_IMAGE_MB = 800
KEY = "container-test-key"


@pytest.fixture(scope="module")
def engine() -> Engine:
    found, why = find_engine()
    if found is None:
        pytest.skip(f"no container engine can run a container here: {why}")
    return found


@pytest.fixture(scope="module")
def cpu_image(engine, tmp_path_factory):
    """docker/Dockerfile.cpu built from this checkout with pip's local indexes mounted and no
    network; removed (with its build stage) afterwards."""
    index = local_index()
    if not index:
        pytest.skip("pip has no local package index (a file:// index-url or a find-links folder): "
                    "the image build would download from PyPI, and tests never download")
    if engine.name != "podman":
        pytest.skip(f"{engine.name} build cannot mount pip's local indexes (podman build -v can); "
                    "build docker/Dockerfile.cpu by hand (docker/README.md)")
    # what the build will ask pip for, resolved here first against the same indexes only
    check = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                            "--quiet", "--only-binary=:all:", "-r", str(DOCKER / "requirements-cpu.txt")],
                           capture_output=True, text=True, timeout=300,
                           env={"PATH": "/usr/bin:/bin", "PIP_CONFIG_FILE": "/dev/null", **index.pip_env()})
    if check.returncode != 0:
        lines = [ln for ln in check.stderr.splitlines() if ln.startswith("ERROR")]
        pytest.skip(f"pip's local indexes lack what the image installs ({lines[:1]}): add a folder "
                    f"of those wheels (pip download --no-deps -d DIR PACKAGE) to ${WHEELS_ENV}")
    tag = f"localhost/clarivis-test:{uuid.uuid4().hex[:12]}"
    build_id = uuid.uuid4().hex
    # --format docker keeps HEALTHCHECK (OCI drops it); --layers=false keeps no per-step images
    args = ["build", "--format", "docker", "--layers=false", "--network", "none", *engine.run_flags,
            "--build-arg", f"BASE_IMAGE={engine.base_image}", "--label", f"clarivis.test={build_id}",
            "-f", str(DOCKER / "Dockerfile.cpu"), "-t", tag]
    for folder in index.mounts:
        args += ["-v", f"{folder}:{folder}:ro"]
    for name, value in index.pip_env().items():
        args += ["--build-arg", f"{name}={value}"]
    started = time.monotonic()
    engine(*args, str(ROOT), timeout=1200)
    print(f"built {tag} in {time.monotonic() - started:.0f} s: {image_size_mb(engine, tag):.0f} MB "
          f"from {engine.base_image} with {' '.join(engine.argv)} {' '.join(engine.run_flags)}")
    yield tag
    engine("rmi", "--force", tag, check=False)
    # the build stage stays behind untagged, with the build's label: remove it too
    engine("image", "prune", "--force", "--filter", f"label=clarivis.test={build_id}", check=False)


@pytest.fixture
def served(engine, cpu_image, cnn_export, tmp_path):
    """The image serving the tiny exported CNN from a read-only bind mount; yields (name, URL)."""
    bundle, _ = cnn_export
    mounted = shutil.copytree(bundle, tmp_path / "model")
    # clarivis writes config.json and model.safetensors owner-only (0600, fileio.atomic_write's
    # mkstemp); the service runs as uid 10001, so the copy is made world-readable as a user would
    for path in [mounted, *mounted.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    name = f"clarivis-test-{uuid.uuid4().hex[:12]}"
    engine("run", "--detach", "--name", name, *engine.run_flags, "--publish", "127.0.0.1::8000",
           "--volume", f"{mounted}:{MODEL_DIR}:ro", "--env", f"CLARIVIS_API_KEY={KEY}", cpu_image)
    try:
        port = engine("port", name, "8000/tcp").stdout.strip().splitlines()[0].rsplit(":", 1)[1]
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if request(f"{url}/readyz", KEY)[0] == 200:
                    break
            except OSError:
                pass
            state = engine("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            logs = engine("logs", name, check=False)
            assert state == "running" and time.monotonic() < deadline, f"{state}\n{logs.stdout}{logs.stderr}"
            time.sleep(0.5)
        yield name, url, bundle
    finally:
        engine("rm", "--force", name, check=False)


def test_image_serves_the_bundle_as_the_runtime_predicts(engine, served, export_base):
    name, url, bundle = served
    status, body = request(f"{url}/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})  # liveness needs no key
    ready = json.loads(request(f"{url}/readyz", KEY)[1])
    assert ready["status"] == "ready" and ready["checks"]["model"] is True
    image = sorted(p for p in held_out(export_base).rglob("*.png"))[0]
    body, headers = multipart("file", image.name, image.read_bytes())
    assert request(f"{url}/v1/predict", data=body, headers=headers)[0] == 401
    status, payload = request(f"{url}/v1/predict", KEY, data=body, headers=headers)
    assert status == 200, payload
    answer = json.loads(payload)
    (row,) = answer["predictions"]
    (expected,) = Predictor(bundle).predict([image])
    assert answer["backend"] == "onnx" and row["label"] == expected.label
    assert row["confidence"] == pytest.approx(expected.confidence, abs=1e-5)

    # the image's own HEALTHCHECK (docker runs it on its timer; podman without systemd on demand)
    if engine.name == "podman":
        assert engine("healthcheck", "run", name, check=False).returncode == 0
    deadline = time.monotonic() + 120
    while health_status(engine, name) != "healthy":
        assert time.monotonic() < deadline, health_status(engine, name)
        time.sleep(1)

    # non-root, no torch, and the prediction logged in /data by that user
    assert engine("exec", name, "id", "-u").stdout.strip() == "10001"
    no_torch = engine("exec", name, "python", "-c", "import torch", check=False)
    assert no_torch.returncode == 1 and "No module named 'torch'" in no_torch.stderr
    count = ("import sqlite3, time\n"
             "for _ in range(50):\n"
             "    n = sqlite3.connect('/data/predictions.db').execute('select count(*) from predictions')"
             ".fetchone()[0]\n"
             "    if n: break\n"
             "    time.sleep(0.2)\n"
             "print(n)")
    assert engine("exec", name, "python", "-c", count).stdout.strip() == "1"


def test_image_is_slim(engine, cpu_image):
    assert image_size_mb(engine, cpu_image) < MAX_IMAGE_MB
    inspected = json.loads(engine("image", "inspect", cpu_image).stdout)[0]
    config = inspected["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["clarivis"] and config["Cmd"][:2] == ["serve", MODEL_DIR]
    check = config.get("Healthcheck") or inspected.get("Healthcheck")  # docker's place, podman's
    assert check["Test"][:2] == ["CMD", "python"]  # kept: built with --format docker
