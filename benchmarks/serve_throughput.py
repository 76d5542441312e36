"""Throughput and latency of `clarivis serve` over HTTP on loopback, next to raw onnxruntime on the
same model and images, in one run.

  service-onnx   POST /v1/predict, one image a request, --backend onnx (when RUN/model/model.onnx exists)
  service-torch  the same with --backend torch (--backends to choose)
  ort            onnxruntime.InferenceSession.run on the same images, decoded and preprocessed
                 before the clock starts: the model's own speed, no HTTP, no decode, no log

Each at concurrency 1 (requests one after another; ort: batch 1) and concurrency 16 (16 requests
in flight; ort: batches of 16, which is what the server's micro-batcher makes of them). The
headline is the ratio service c16 img/s / ort c16 img/s (issue 14: >= 0.3 at 32 px, >= 0.8 at
224 px).

The image travels as the raw body (Content-Type image/jpeg, --body raw, when the server takes it:
a probe request decides) or as a multipart form (--body multipart). The load comes from a separate
process (asyncio streams, keep-alive, requests prebuilt: ~0.1 ms of CPU a request, where httpx
cost 1.5-3.5 ms, as much as the server itself); its CPU per request is reported next to the
server's (its whole process tree, uvicorn workers included). --server-cpus / --client-cpus pin
them (taskset lists); ort then runs on the server's cores with as many threads.

    python benchmarks/serve_throughput.py --model-dir RUN/model --data DIR
    python benchmarks/serve_throughput.py --make-bundle resnet18@32 --data CIFAR/train --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import resource
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import common

NAME = "serve_throughput"
SCRIPT = str(Path(__file__).resolve())
CONCURRENCIES = (1, 16)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", help="a ModelBundle folder (RUN/model); or --make-bundle")
    p.add_argument("--make-bundle", metavar="MODEL@SIZE",
                   help="train one (1 epoch, random init, --bundle-images of --data) and export it, e.g. "
                        "resnet18@32 or efficientnet_lite0@224: for throughput, not accuracy")
    p.add_argument("--bundle-images", type=int, default=300, help="--make-bundle: training images [300]")
    p.add_argument("--bundle-out", default=None,
                   help="--make-bundle: run folder to keep (reused when it already holds model/model.onnx) "
                        "[in the scratch folder]")
    p.add_argument("--data", required=True, help="images: class folders DIR/<class>/* or a flat folder")
    p.add_argument("--images", type=int, default=64, help="distinct images, cycled [64]")
    p.add_argument("--requests", type=int, default=1000, help="requests per concurrency level [1000]")
    p.add_argument("--backends", default="onnx,torch", help="services to measure, in order [onnx,torch]")
    p.add_argument("--body", choices=("raw", "multipart"), default="raw",
                   help="raw: the image as the body (image/jpeg), multipart: field 'file' [raw; multipart "
                        "when the server refuses raw bodies]")
    p.add_argument("--workers", type=int, default=1, help="server processes (serve(..., workers=N)) [1]")
    p.add_argument("--server-cpus", default=None, help="cores of the server and of ort, e.g. 0-1 [all]")
    p.add_argument("--client-cpus", default=None, help="cores of the load generator, e.g. 1 [all]")
    p.add_argument("--max-batch", type=int, default=None, help="server --max-batch [its default]")
    p.add_argument("--max-wait-ms", type=float, default=None, help="server --max-wait-ms [its default]")
    p.add_argument("--device", default="cpu", help="torch backend device [cpu]")
    common.add_output_args(p)
    args = p.parse_args()
    if bool(args.model_dir) == bool(args.make_bundle):
        p.error("give --model-dir or --make-bundle MODEL@SIZE")
    return args


def main() -> None:
    if common.is_worker_call():
        common.worker_main({"ort": ort_worker})
        return
    if len(sys.argv) == 3 and sys.argv[1] == LOAD_FLAG:
        load_main(Path(sys.argv[2]))
        return
    args = parse_args()
    from predict_throughput import image_files

    server_cpus, client_cpus = cpu_list(args.server_cpus), cpu_list(args.client_cpus)
    paths = image_files(Path(args.data), args.images)
    print(f"{NAME}: {len(paths)} images, {args.requests} requests per level, {args.device}, "
          f"{args.workers} worker(s), server cores {fmt_cpus(server_cpus)}, load generator cores "
          f"{fmt_cpus(client_cpus)}", file=sys.stderr)
    pipelines: dict[str, Any] = {}
    with common.work_dir(args.work_dir, args.keep) as tmp:
        model_dir = (make_bundle(args, tmp) if args.make_bundle else Path(args.model_dir)).resolve()
        onnx_path = model_dir / "model.onnx"
        if not onnx_path.is_file():
            onnx_path = export_onnx(model_dir, tmp / "model.onnx")
        list_file = tmp / "images.txt"
        list_file.write_text("".join(f"{p.resolve()}\n" for p in paths))
        ort_threads = args.threads or (len(server_cpus) if server_cpus else None)
        spec = {"model_dir": str(model_dir), "onnx": str(onnx_path), "images": str(list_file),
                "requests": args.requests, "cpus": server_cpus, "ort_threads": ort_threads}
        result, run = common.run_worker(SCRIPT, "ort", spec, tmp, threads=args.threads)
        pipelines["ort"] = {**result, "process": run.to_dict()}
        for backend in args.backends.split(","):
            why_not = backend_unavailable(backend, model_dir)
            if why_not:
                pipelines[f"service-{backend}"] = {"skipped": why_not}
                print(f"service-{backend}: skipped ({why_not})", file=sys.stderr)
                continue
            pipelines[f"service-{backend}"] = measure_service(backend, model_dir, paths, args, tmp)
    ort_c16 = pipelines["ort"].get("c16", {}).get("images_per_second")
    ratios = {name: common.fmt_ratio(p.get("c16", {}).get("images_per_second"), ort_c16)
              for name, p in pipelines.items() if name.startswith("service-") and "c16" in p}
    result = {
        "benchmark": NAME,
        "settings": {"model_dir": "/".join(model_dir.parts[-2:]), "make_bundle": args.make_bundle,
                     "data": "/".join(Path(args.data).resolve().parts[-2:]), "images": len(paths),
                     "requests": args.requests, "device": args.device, "body": args.body,
                     "workers": args.workers, "server_cpus": server_cpus, "client_cpus": client_cpus,
                     "ort_threads": ort_threads, "threads": args.threads, "max_batch": args.max_batch,
                     "max_wait_ms": args.max_wait_ms,
                     "onnx": "bundle" if onnx_path.parent == model_dir else "exported by the benchmark"},
        "ratio_c16_service_over_ort": ratios,
        "pipelines": pipelines,
        "machine": common.describe_machine(args.device),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = common.write_result(result, args.json, NAME, args.device)
    print(summary_line(result, path))


def cpu_list(text: str | None) -> list[int] | None:
    """'0-1,3' -> [0, 1, 3] (taskset's list syntax); None: no pinning."""
    if not text:
        return None
    cpus = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise SystemExit(f"error: '{text}' is not a core list; use e.g. 0-1 or 0,2")
        cpus.update(range(int(first), int(last or first) + 1))
    usable = os.sched_getaffinity(0)
    if not cpus <= usable:
        raise SystemExit(f"error: cores {sorted(cpus - usable)} are not usable here ({sorted(usable)} are)")
    return sorted(cpus)


def fmt_cpus(cpus: list[int] | None) -> str:
    return ",".join(map(str, cpus)) if cpus else "all"


def pinned(cpus: list[int] | None):
    """preexec_fn of a child that runs on `cpus` only (None: no pinning)."""
    return None if not cpus else (lambda: os.sched_setaffinity(0, cpus))


def make_bundle(args, tmp: Path) -> Path:
    """A bundle of MODEL at SIZE px: `clarivis train` for 1 epoch on --bundle-images images of
    --data (random init), then `clarivis export`. Its accuracy is meaningless; its speed is the
    model's. Reused when --bundle-out already holds an exported one."""
    model, _, size = args.make_bundle.partition("@")
    if not model or not size.isdigit():
        raise SystemExit(f"error: --make-bundle takes MODEL@SIZE, e.g. resnet18@32 "
                         f"(got '{args.make_bundle}')")
    run = Path(args.bundle_out) if args.bundle_out else tmp / f"bundle-{model}-{size}"
    if (run / "model" / "model.onnx").is_file():
        print(f"make-bundle: reusing {run / 'model'}", file=sys.stderr)
        return run / "model"
    rows = common.stratified_first(common.class_folder_images(common.dataset_root(args.data)),
                                   args.bundle_images)
    tree = common.write_symlink_tree(rows, tmp / "bundle-data")
    clarivis = [sys.executable, "-m", "clarivis"]
    steps = [("train", [*clarivis, "train", str(tree / "train"), "--out", str(run), "--model", model,
                        "--img-size", size, "--epochs", "1", "--no-report"]),
             ("export", [*clarivis, "export", str(run / "model")])]
    for label, command in steps:
        done = common.run_child(command, env=common.child_env(args.threads), label=label)
        if not done.ok:
            raise SystemExit(f"error: --make-bundle: clarivis {label} exited with {done.returncode}")
    return run / "model"


def backend_unavailable(backend: str, model_dir: Path) -> str | None:
    if backend not in ("onnx", "torch"):
        return f"unknown backend '{backend}'"
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


def serve_entry() -> tuple[str, bool]:
    """(module that has serve(), whether it takes workers=): clarivis.serve.runner in the
    restructured service, clarivis.serve.app before it."""
    import importlib

    for module in ("clarivis.serve.runner", "clarivis.serve.app"):
        try:
            serve = importlib.import_module(module).serve
        except (ImportError, AttributeError):
            continue
        return module, "workers" in inspect.signature(serve).parameters
    raise SystemExit("error: no clarivis serve() found; install clarivis[serve]")


def measure_service(backend: str, model_dir: Path, paths: list[Path], args, tmp: Path) -> dict:
    module, takes_workers = serve_entry()
    if args.workers > 1 and not takes_workers:
        why = f"--workers {args.workers}: this clarivis's serve() has no workers option"
        print(f"service-{backend}: skipped ({why})", file=sys.stderr)
        return {"skipped": why}
    port = common.free_port()
    options = {"backend": backend, "db_url": f"sqlite:///{tmp / f'{backend}.db'}", "port": port,
               "log_level": "warning"}
    if args.workers > 1:
        options["workers"] = args.workers
    if backend == "torch":
        options["device"] = args.device
    for name in ("max_batch", "max_wait_ms"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    code = f"from {module} import serve; serve({str(model_dir)!r}, **{options!r})"
    server_cpus, client_cpus = cpu_list(args.server_cpus), cpu_list(args.client_cpus)
    proc = subprocess.Popen([sys.executable, "-c", code], env=common.child_env(args.threads),
                            start_new_session=True, preexec_fn=pinned(server_cpus))
    url = f"http://127.0.0.1:{port}"
    try:
        common.wait_ready(url, proc)
        body = args.body
        if body == "raw" and not takes_raw_body(url, paths[0]):
            print(f"service-{backend}: the server refuses raw image bodies; sending multipart",
                  file=sys.stderr)
            body = "multipart (raw refused)"
        levels, peak = {}, 0
        for concurrency in CONCURRENCIES:
            spec = {"port": port, "images": [str(p) for p in paths], "requests": args.requests,
                    "concurrency": concurrency, "body": body.split()[0]}
            cpu_before = tree_cpu_seconds(proc.pid)
            level = run_load(spec, tmp, client_cpus)
            # the warm-up requests are in it too (the load child's start is idle time)
            server_cpu = tree_cpu_seconds(proc.pid) - cpu_before
            answered = args.requests + level["warmup_requests"]
            level["server_cpu_us_per_request"] = round(server_cpu / answered * 1e6)
            levels[f"c{concurrency}"] = level
            peak = max(peak, common.tree_rss_bytes(proc.pid))
        metrics = urllib.request.urlopen(f"{url}/metrics").read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    for level in levels.values():
        print(f"service-{backend} c{level['concurrency']}: {level['images_per_second']:.0f} img/s, "
              f"p50 {level['p50_ms']:.1f} ms, p99 {level['p99_ms']:.1f} ms, CPU a request: server "
              f"{level['server_cpu_us_per_request']} us, load generator "
              f"{level['client_cpu_us_per_request']} us, statuses {level['statuses']}", file=sys.stderr)
    return {**levels, "body": body, "workers": args.workers, "mean_batch_size": mean_batch(metrics),
            "rss_mib": round(peak / common.MIB, 1)}


def takes_raw_body(url: str, image: Path) -> bool:
    """One probe request: does /v1/predict take the image as the raw body?"""
    request = urllib.request.Request(f"{url}/v1/predict?top_k=1", data=image.read_bytes(), method="POST",
                                     headers={"Content-Type": "image/jpeg", "X-Filename": image.name})
    try:
        return urllib.request.urlopen(request, timeout=60).status == 200
    except urllib.error.HTTPError as err:
        if err.code in (400, 415, 422):
            return False
        raise SystemExit(f"error: the probe request got {err.code}: {err.read()[:200]!r}") from None


def tree_cpu_seconds(root_pid: int) -> float:
    """User + system CPU seconds of root_pid and its live descendants (uvicorn's workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                ppid = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo, tick = 0.0, [root_pid], os.sysconf("SC_CLK_TCK")
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


# ----------------------------------------------------------------------------- the load generator

LOAD_FLAG = "--load"
BOUNDARY = "clarivisbenchmarkboundary"


def run_load(spec: dict[str, Any], tmp: Path, cpus: list[int] | None) -> dict[str, Any]:
    """One concurrency level from a child process (`SCRIPT --load SPEC.json`, pinned to cpus)."""
    spec_path, result_path = tmp / "load.json", tmp / "load-result.json"
    result_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps({**spec, "result_path": str(result_path)}))
    done = subprocess.run([sys.executable, SCRIPT, LOAD_FLAG, str(spec_path)], env=common.child_env(None),
                          preexec_fn=pinned(cpus))
    if done.returncode != 0 or not result_path.is_file():
        raise SystemExit(f"error: the load generator exited with code {done.returncode}")
    return json.loads(result_path.read_text())


def load_main(spec_path: Path) -> None:
    """The load generator's process: no torch, no httpx; writes its level's figures as JSON."""
    spec = json.loads(spec_path.read_text())
    payloads = [(Path(p).name, Path(p).read_bytes()) for p in spec["images"]]
    requests = [http_request(spec["port"], name, data, spec["body"]) for name, data in payloads]
    result = asyncio.run(load(spec["port"], requests, spec["requests"], spec["concurrency"]))
    Path(spec["result_path"]).write_text(json.dumps(result))


def http_request(port: int, name: str, data: bytes, body: str) -> bytes:
    """The bytes of one POST /v1/predict?top_k=1 (HTTP/1.1, keep-alive), built once."""
    if body == "raw":
        headers, payload = f"Content-Type: image/jpeg\r\nX-Filename: {name}\r\n", data
    else:
        headers = f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        payload = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                   f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()
    return (f"POST /v1/predict?top_k=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}"
            f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload


async def load(port: int, requests: list[bytes], n: int, concurrency: int) -> dict:
    """`concurrency` keep-alive connections, each sending its next request when the last answer
    is in, until n are answered. Plain asyncio streams: the generator must cost the server's
    cores as little as possible (it shares them unless pinned apart)."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}

    async def connection(todo) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in todo:
            start = time.perf_counter()
            writer.write(requests[i % len(requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at < 0:
                raise SystemExit("error: an answer without Content-Length; this generator reads "
                                 "no chunked bodies")
            await reader.readexactly(int(head[at + 17:head.index(b"\r\n", at + 2)]))
            latencies.append(time.perf_counter() - start)
            status = head[9:12].decode()
            statuses[status] = statuses.get(status, 0) + 1
            if b"\r\nconnection: close" in lower:  # e.g. a 503 over uvicorn's connection limit
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()

    warm = iter(range(2 * concurrency))  # warm-up: connections, the server's first batches
    await asyncio.gather(*(connection(warm) for _ in range(concurrency)))
    latencies.clear()
    statuses.clear()
    todo = iter(range(n))  # shared: a connection takes the next index when it is free
    cpu_before, start = cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(connection(todo) for _ in range(concurrency)))
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_before
    return {"concurrency": concurrency, "requests": n, "seconds": round(seconds, 3),
            "images_per_second": n / seconds, **percentiles(latencies), "statuses": statuses,
            "warmup_requests": 2 * concurrency, "client_cpu_us_per_request": round(cpu / n * 1e6),
            "client_cores_busy": round(cpu / seconds, 3)}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
    if spec.get("cpus"):
        os.sched_setaffinity(0, spec["cpus"])  # the server's cores, no more
    options = ort.SessionOptions()
    if spec.get("ort_threads"):
        options.intra_op_num_threads = spec["ort_threads"]
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
    result["ort_threads"] = options.intra_op_num_threads  # 0: onnxruntime's default (physical cores)
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
        if "server_cpu_us_per_request" in p.get("c16", {}):  # a service: what it sent, what it cost
            levels.append(f"body {p['body']}, server CPU {p['c16']['server_cpu_us_per_request']:,} us "
                          f"and load generator {p['c16']['client_cpu_us_per_request']:,} us a request at c16")
        parts.append(f"{name}: " + ", ".join(levels))
    s = r["settings"]
    ratios = ", ".join(f"{name.removeprefix('service-')} {ratio:.2f}x"
                       for name, ratio in r["ratio_c16_service_over_ort"].items() if ratio is not None)
    return (f"{NAME} {s['device']} ({s['requests']} requests per level, "
            f"{s['workers']} worker(s)): c16 service/ort {ratios or 'n/a'} | " + " | ".join(parts)
            + f" | {path}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
