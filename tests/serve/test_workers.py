"""`clarivis serve --workers 2` as a user runs it: two processes on one port, one prediction log,
one /metrics that sums both."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tests.serve.live import png_bytes

from clarivis.serve.predlog import PredictionLog

pytestmark = pytest.mark.slow
REQUESTS = 120
CONCURRENCY = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, db: str, *flags: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "clarivis", "serve", str(bundle), "--port", str(port), "--db", db, *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop(proc)
    raise AssertionError("the server did not become ready in 120 s")


def stop(proc: subprocess.Popen) -> str:
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: workers flush their logs and exit
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    return out


async def load(url: str, n: int, concurrency: int) -> list[int]:
    images = [png_bytes((220, 20, 20) if i % 2 else (20, 20, 220), size=(40 + i % 7, 30)) for i in range(8)]
    statuses: list[int] = []
    queue = list(range(n))
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async def worker() -> None:
            while queue:
                i = queue.pop()
                r = await client.post("/v1/predict", files=[("file", (f"{i}.png", images[i % 8]))])
                statuses.append(r.status_code)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def predictions_total(metrics: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("clarivis_predictions_total{"))


def test_two_workers_answer_log_and_count_every_request(tiny_bundle, tmp_path):
    db = f"sqlite:///{tmp_path / 'log.db'}"
    proc, url = start_server(tiny_bundle, db, "--workers", "2")
    try:
        statuses = asyncio.run(load(url, REQUESTS, CONCURRENCY))
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        output = stop(proc)
    assert statuses.count(200) == REQUESTS, (sorted(set(statuses)), output[-2000:])
    assert predictions_total(metrics) == REQUESTS  # summed over both workers, whichever answered
    assert output.count("Started server process") == 2  # two worker processes
    with PredictionLog(db) as log:
        assert log.count() == REQUESTS  # every answer logged once, none twice


def test_bad_worker_count_and_bundle_fail_once_with_one_line(tiny_bundle, tmp_path):
    for args, fragment in ((["--workers", "0"], "workers"), (["--workers", "2"], "does not exist")):
        model = tiny_bundle if "0" in args else tmp_path / "nothing"
        r = subprocess.run([sys.executable, "-m", "clarivis", "serve", str(model), *args,
                            "--db", f"sqlite:///{tmp_path / 'x.db'}"], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode != 0 and fragment.lower() in r.stderr.lower(), r.stderr
        assert "Traceback" not in r.stderr
