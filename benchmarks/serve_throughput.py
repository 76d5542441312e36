"""Throughput and latency of `clarivis serve` over HTTP on loopback, next to raw onnxruntime on the
same model and images, in one run.

  service-torch  POST /v1/predict, one image a request, --backend torch
  service-onnx   the same with --backend onnx (when clarivis.runtime and RUN/model/model.onnx exist)
  ort            onnxruntime.InferenceSession.run on the same images, decoded and preprocessed
                 before the clock starts: the model's own speed, no HTTP, no decode, no log

Each at concurrency 1 (requests one after another; ort: batch 1) and concurrency 16 (16 requests
in flight; ort: batches of 16, which is what the server's micro-batcher makes of them).
Latency is per request (ort: per call), p50 and p99; throughput is images per second.
Each server runs alone in its own child process (peak RSS sampled); the load comes from this one.

    python benchmarks/serve_throughput.py --model-dir RUN/model --data DIR
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import common

NAME = "serve_throughput"
SCRIPT = str(Path(__file__).resolve())
CONCURRENCIES = (1, 16)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, help="a ModelBundle folder (RUN/model)")
    p.add_argument("--data", required=True, help="images: class folders DIR/<class>/* or a flat folder")
    p.add_argument("--images", type=int, default=64, help="distinct images, cycled [64]")
    p.add_argument("--requests", type=int, default=1000, help="requests per concurrency level [1000]")
    p.add_argument("--max-batch", type=int, default=None, help="server --max-batch [its default]")
    p.add_argument("--max-wait-ms", type=float, default=None, help="server --max-wait-ms [its default]")
    p.add_argument("--device", default="cpu", help="torch backend device [cpu]")
    common.add_output_args(p)
    return p.parse_args()


def main() -> None:
    if common.is_worker_call():
        common.worker_main({"ort": ort_worker})
        return
    args = parse_args()
    from predict_throughput import image_files

    model_dir = Path(args.model_dir).resolve()
    paths = image_files(Path(args.data), args.images)
    payloads = [p.read_bytes() for p in paths]
    print(f"{NAME}: {len(paths)} images, {args.requests} requests per level, {args.device}", file=sys.stderr)
    pipelines: dict[str, Any] = {}
    with common.work_dir(args.work_dir, args.keep) as tmp:
        onnx_path = model_dir / "model.onnx"
        if not onnx_path.is_file():
            onnx_path = export_onnx(model_dir, tmp / "model.onnx")
        list_file = tmp / "images.txt"
        list_file.write_text("".join(f"{p.resolve()}\n" for p in paths))
        spec = {"model_dir": str(model_dir), "onnx": str(onnx_path), "images": str(list_file),
                "requests": args.requests}
        result, run = common.run_worker(SCRIPT, "ort", spec, tmp, threads=args.threads)
        pipelines["ort"] = {**result, "process": run.to_dict()}
        for backend in ("torch", "onnx"):
            why_not = backend_unavailable(backend, model_dir)
            if why_not:
                pipelines[f"service-{backend}"] = {"skipped": why_not}
                print(f"service-{backend}: skipped ({why_not})", file=sys.stderr)
                continue
            pipelines[f"service-{backend}"] = measure_service(backend, model_dir, payloads, args, tmp)
    result = {
        "benchmark": NAME,
        "settings": {"model_dir": "/".join(model_dir.parts[-2:]),
                     "data": "/".join(Path(args.data).resolve().parts[-2:]), "images": len(paths),
                     "requests": args.requests, "device": args.device,
                     "threads": args.threads, "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
                     "onnx": "bundle" if onnx_path.parent == model_dir else "exported by the benchmark"},
        "pipelines": pipelines,
        "machine": common.describe_machine(args.device),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = common.write_result(result, args.json, NAME, args.device)
    print(summary_line(result, path))


def backend_unavailable(backend: str, model_dir: Path) -> str | None:
    if backend == "onnx":
        import importlib.util

        if importlib.util.find_spec("clarivis.runtime") is None:
            return "clarivis.runtime is not installed"
        if not (model_dir / "model.onnx").is_file():
            return "the bundle has no model.onnx; run clarivis export first"
    return None


def export_onnx(model_dir: Path, path: Path) -> Path:
    """The bundle's model as ONNX (batch dimension dynamic), for the raw baseline only, when the
    bundle has no model.onnx of its own."""
    import torch

    from clarivis import Classifier

    clf = Classifier.load(model_dir, device="cpu")
    size = clf.config.preprocess.img_size
    dummy = torch.zeros(1, 3, size, size)
    torch.onnx.export(clf.model, (dummy,), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return path


# ----------------------------------------------------------------------------- the service


def measure_service(backend: str, model_dir: Path, payloads: list[bytes], args, tmp: Path) -> dict:
    port = free_port()
    options = {"backend": backend, "db_url": f"sqlite:///{tmp / f'{backend}.db'}", "port": port,
               "log_level": "warning"}
    if backend == "torch":
        options["device"] = args.device
    for name in ("max_batch", "max_wait_ms"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    code = f"from clarivis.serve.app import serve; serve({str(model_dir)!r}, **{options!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], env=common.child_env(args.threads),
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        levels, peak = {}, 0
        for concurrency in CONCURRENCIES:
            levels[f"c{concurrency}"] = asyncio.run(load(url, payloads, args.requests, concurrency))
            peak = max(peak, common.tree_rss_bytes(proc.pid))
        metrics = urllib.request.urlopen(f"{url}/metrics").read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    for level in levels.values():
        print(f"service-{backend} c{level['concurrency']}: {level['images_per_second']:.0f} img/s, "
              f"p50 {level['p50_ms']:.1f} ms, p99 {level['p99_ms']:.1f} ms, statuses {level['statuses']}",
              file=sys.stderr)
    return {**levels, "mean_batch_size": mean_batch(metrics), "rss_mib": round(peak / common.MIB, 1)}


async def load(url: str, payloads: list[bytes], n: int, concurrency: int) -> dict:
    import httpx

    latencies, statuses = [], {}
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(i: int) -> None:
            files = [("file", (f"{i}.img", payloads[i % len(payloads)]))]
            async with sem:
                start = time.perf_counter()
                r = await client.post("/v1/predict", files=files, params={"top_k": 1})
                latencies.append(time.perf_counter() - start)
            statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1

        await asyncio.gather(*(one(i) for i in range(min(20, n))))  # warm-up: connections, caches
        latencies.clear()
        statuses.clear()
        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        seconds = time.perf_counter() - start
    return {"concurrency": concurrency, "requests": n, "seconds": round(seconds, 3),
            "images_per_second": n / seconds, **percentiles(latencies), "statuses": statuses}


def percentiles(seconds: list[float]) -> dict:
    import numpy as np

    p50, p99 = np.percentile(np.array(seconds) * 1000, [50, 99])
    return {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3)}


def mean_batch(metrics: str) -> float | None:
    values = {}
    for line in metrics.splitlines():
        for key in ("clarivis_batch_size_images_sum", "clarivis_batch_size_images_count"):
            if line.startswith(key + " "):
                values[key] = float(line.split()[1])
    count = values.get("clarivis_batch_size_images_count")
    return round(values["clarivis_batch_size_images_sum"] / count, 2) if count else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: the server exited with code {proc.returncode}")
        try:
            if urllib.request.urlopen(f"{url}/readyz", timeout=2).status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"error: the server was not ready after {timeout_s:.0f} s")


# ----------------------------------------------------------------------------- raw onnxruntime


def ort_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """InferenceSession.run on preprocessed images: batch 1 one after another, and batches of 16."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from clarivis import Classifier
    from clarivis.data.dataset import pil_to_uint8
    from clarivis.data.io import load_image

    clf = Classifier.load(spec["model_dir"], device="cpu")
    size = clf.config.preprocess.img_size
    paths = Path(spec["images"]).read_text().splitlines()
    pixels = torch.stack([clf.resize(pil_to_uint8(load_image(p, reduce_to=size))) for p in paths])
    inputs = clf.normalize(pixels).contiguous().numpy().astype(np.float32)  # as predict feeds the model
    options = ort.SessionOptions()
    if spec.get("threads"):
        options.intra_op_num_threads = spec["threads"]
    session = ort.InferenceSession(spec["onnx"], options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    result = {}
    for concurrency in CONCURRENCIES:
        calls = max(1, spec["requests"] // concurrency)
        batches = [np.ascontiguousarray(inputs[(i * concurrency + np.arange(concurrency)) % len(inputs)])
                   for i in range(calls)]
        for b in batches[:5]:
            session.run(None, {name: b})  # warm-up
        latencies = []
        start = time.perf_counter()
        for b in batches:
            t = time.perf_counter()
            session.run(None, {name: b})
            latencies.append(time.perf_counter() - t)
        seconds = time.perf_counter() - start
        result[f"c{concurrency}"] = {"concurrency": concurrency, "batch": concurrency, "calls": calls,
                                     "seconds": round(seconds, 3), **percentiles(latencies),
                                     "images_per_second": calls * concurrency / seconds}
        print(f"ort batch {concurrency}: {calls * concurrency / seconds:.0f} img/s", file=sys.stderr)
    result["onnxruntime"] = ort.__version__
    return result


# ----------------------------------------------------------------------------- summary


def summary_line(r: dict[str, Any], path: Path) -> str:
    parts = []
    for name, p in r["pipelines"].items():
        if "skipped" in p:
            parts.append(f"{name} skipped")
            continue
        levels = [f"c{c} {p[f'c{c}']['images_per_second']:,.0f} img/s p50 {p[f'c{c}']['p50_ms']:.1f} "
                  f"p99 {p[f'c{c}']['p99_ms']:.1f} ms" for c in CONCURRENCIES if f"c{c}" in p]
        parts.append(f"{name}: " + ", ".join(levels))
    s = r["settings"]
    return f"{NAME} {s['device']} ({s['requests']} requests per level): " + " | ".join(parts) + f" | {path}"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
