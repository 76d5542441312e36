"""Shared helpers of the clarivis benchmarks: machine description, deterministic subsets written
as CSV manifests and symlink ImageFolder trees, and child processes measured one at a time (wall
time, peak RSS) so that every pipeline has its own memory figure and thread settings.

Only the standard library, torch and pyyaml are used here: the benchmarks run wherever clarivis
itself runs, with nothing else installed."""

from __future__ import annotations

import argparse
import collections
import csv
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
POLL_S = 0.2  # how often a running child is checked (exit, RSS of its process tree, callbacks)
MIB = 1024 * 1024


# ----------------------------------------------------------------------------- machine


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_tag(device: str) -> str:
    """'cuda:1' -> 'cuda': the device part of a default result file name."""
    return device.split(":")[0]


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (x86 'model name', else Arm's fields)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    for key in ("model name", "Model", "Hardware", "cpu model"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine()


def memory_total_gib() -> float | None:
    try:
        match = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    except OSError:
        return None
    return round(int(match.group(1)) / MIB, 1) if match else None


def describe_machine(device: str) -> dict[str, Any]:
    """What the figures were measured on. Call it after the measurements: asking for the GPU's
    name creates a CUDA context in this (parent) process, which should not exist while children
    run."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": memory_total_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "timm": _version("timm"),
        "clarivis": _version("clarivis"),
        "clarivis_commit": _git_commit(),
        "device": device,
        "cuda_device": None,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        info["cuda_device"] = torch.cuda.get_device_name(index)
        info["cuda_memory_gib"] = round(props.total_memory / 1024**3, 1)
        info["cuda_version"] = torch.version.cuda
    return info


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """Short commit of the clarivis checkout, '+dirty' when it has local changes."""
    try:
        head = subprocess.run(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_DIR), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


# ----------------------------------------------------------------------------- data


def class_folder_images(root: Path) -> dict[str, list[Path]]:
    """{class: sorted image files} of a DIR/<class>/... tree (nested folders inside a class too)."""
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    by_class = {}
    for class_dir in classes:
        files = sorted(p for p in class_dir.rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if files:
            by_class[class_dir.name] = files
    if len(by_class) < 2:
        raise SystemExit(f"error: {root} needs at least 2 class subfolders with images "
                         "(DIR/<class>/*.jpg)")
    return by_class


def stratified_first(by_class: dict[str, list[Path]], n: int | None) -> list[tuple[Path, str]]:
    """The first n/classes images of every class (sorted names: deterministic, no RNG); the
    remainder of n goes to the first classes. n=None takes every image."""
    if n is None:
        return [(p, label) for label, files in by_class.items() for p in files]
    per_class, extra = divmod(n, len(by_class))
    rows = []
    for i, (label, files) in enumerate(by_class.items()):
        take = per_class + (1 if i < extra else 0)
        rows.extend((p, label) for p in files[:take])
    return rows


def dataset_root(data: str) -> Path:
    """DIR, or DIR/train when DIR holds split folders."""
    root = Path(data)
    return root / "train" if (root / "train").is_dir() else root


def dataset_by_class(root: Path, images: int = 0) -> dict[str, list[Path]]:
    """{class: files} of root/<class>/; `images` > 0 keeps that many, stratified
    (stratified_first), 0 keeps all."""
    by_class = class_folder_images(root)
    return regroup(stratified_first(by_class, images)) if images else by_class


def regroup(rows: list[tuple[Path, str]]) -> dict[str, list[Path]]:
    """(path, label) rows back into {class: files}, in row order."""
    by_class: dict[str, list[Path]] = {}
    for path, label in rows:
        by_class.setdefault(label, []).append(path)
    return by_class


def seeded_val_split(by_class: dict[str, list[Path]], val_fraction: float,
                     seed: int) -> list[tuple[Path, str, str]]:
    """(path, label, 'train'|'val') rows: a seeded val_fraction of every class held out."""
    rng = random.Random(seed)
    rows = []
    for label, files in by_class.items():
        val = set(rng.sample(range(len(files)), round(len(files) * val_fraction)))
        rows.extend((p, label, "val" if i in val else "train") for i, p in enumerate(files))
    return rows


def write_manifest(rows: list[tuple], csv_path: Path) -> Path:
    """A clarivis CSV manifest: path,label[,split] with absolute paths (the CSV is temporary)."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"][: len(rows[0])])
        for path, *rest in rows:
            writer.writerow([str(Path(path).resolve()), *rest])
    return csv_path


def write_symlink_tree(rows: list[tuple], root: Path) -> Path:
    """root/<split>/<class>/<file> symlinks (split 'train' when rows carry none): the
    ImageFolder layout torchvision tutorials read, without copying any pixels."""
    for path, label, *split in rows:
        folder = root / (split[0] if split else "train") / label
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / path.name
        if link.is_symlink():  # same file name in two nested folders of one class
            link = folder / f"{path.parent.name}_{path.name}"
        link.symlink_to(Path(path).resolve())
    return root


def native_image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:
        return img.size


def parse_model_kwargs(text: str | None) -> dict[str, Any]:
    """'img_size=32,patch_size=4' -> {'img_size': 32, 'patch_size': 4} (as clarivis parses it)."""
    result = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"error: --model-kwargs expects key=value pairs, got '{item}'")
        result[key.strip()] = yaml.safe_load(value.strip())
    return result


def create_timm_model(name: str, num_classes: int, img_size: int, model_kwargs: dict[str, Any]):
    """The timm model clarivis builds for these settings: ViT-like models with a fixed input
    size get img_size (their position embeddings depend on it), others take any size."""
    import timm

    kwargs = dict(model_kwargs)
    cfg = timm.get_pretrained_cfg(name)
    if cfg is not None and cfg.to_dict().get("fixed_input_size"):
        kwargs["img_size"] = img_size
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


@contextmanager
def work_dir(parent: str | None, keep: bool) -> Iterator[Path]:
    """A scratch folder for manifests, symlink trees and run folders; removed unless keep."""
    path = Path(tempfile.mkdtemp(prefix="clarivis-bench-", dir=parent))
    try:
        yield path
    finally:
        if keep:
            print(f"kept work folder {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- child processes


@dataclass
class ChildRun:
    """How one measured child process went."""

    command: list[str]
    returncode: int | None
    wall_s: float  # from just before the start to the exit, seconds
    peak_rss_mib: float  # ru_maxrss of the child: its largest single process (workers included
    #                      only when one of them was larger than the main process)
    peak_tree_rss_mib: float  # largest sampled sum of RSS over the child's whole process tree
    #                           (DataLoader workers included; shared pages count once per process)
    killed_after_s: float | None = None  # set when the child ran past its timeout
    output_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["output_tail"] = self.output_tail[-20:] if not self.ok else []
        return d


def child_env(threads: int | None, cache_dir: Path | None = None) -> dict[str, str]:
    """The environment of a measured child: clarivis importable from this checkout when it is not
    installed, the thread count fixed when asked (torch reads OMP_NUM_THREADS at start), and
    clarivis's decode cache in cache_dir when given (a fresh folder: the run starts cold)."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["CLARIVIS_CACHE_DIR"] = str(cache_dir)
    if importlib.util.find_spec("clarivis") is None and (REPO_DIR / "src" / "clarivis").is_dir():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_DIR / "src"),
                                                          env.get("PYTHONPATH")]))
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_child(
    command: list[str],
    *,
    env: dict[str, str],
    timeout_s: float | None = None,
    on_poll: Callable[[float], None] | None = None,
    label: str = "",
) -> ChildRun:
    """Run one command to its end, alone: its output goes to our stderr (prefixed with label);
    peak RSS comes from os.wait4's rusage (ru_maxrss, KiB on Linux), and the whole process tree's
    RSS is sampled every POLL_S seconds. on_poll(elapsed_s) lets a caller watch files meanwhile."""
    start = time.perf_counter()
    # Own session: a timeout or Ctrl-C ends the child and its DataLoader workers, nothing else.
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    tail: collections.deque[str] = collections.deque(maxlen=200)
    reader = threading.Thread(target=_relay, args=(proc.stdout, tail, label), daemon=True)
    reader.start()
    peak_tree, killed_after, status, rusage = 0, None, 0, None
    try:
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            elapsed = time.perf_counter() - start
            if pid:
                break
            peak_tree = max(peak_tree, tree_rss_bytes(proc.pid))
            if on_poll is not None:
                on_poll(elapsed)
            if timeout_s is not None and elapsed > timeout_s and killed_after is None:
                killed_after = elapsed
                _kill_group(proc.pid)
            time.sleep(POLL_S)
    except BaseException:
        _kill_group(proc.pid)
        os.wait4(proc.pid, 0)
        raise
    finally:
        proc.returncode = -1  # reaped by wait4 above; keeps Popen from waiting again
    wall = time.perf_counter() - start
    reader.join(timeout=5)
    proc.stdout.close()
    if on_poll is not None:
        on_poll(wall)  # a last look at files the child wrote just before it exited
    return ChildRun(
        command=[str(c) for c in command], returncode=os.waitstatus_to_exitcode(status),
        wall_s=round(wall, 2), peak_rss_mib=round(rusage.ru_maxrss / 1024, 1),
        peak_tree_rss_mib=round(peak_tree / MIB, 1),
        killed_after_s=round(killed_after, 1) if killed_after else None, output_tail=list(tail),
    )


def _relay(stream, tail: collections.deque, label: str) -> None:
    for line in stream:
        tail.append(line.rstrip("\n"))
        print(f"  [{label}] {line}" if label else line, end="", file=sys.stderr, flush=True)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # the group of the child we started (start_new_session)
    except ProcessLookupError:
        pass


def tree_rss_bytes(root_pid: int) -> int:
    """Sum of RSS over root_pid and all its descendants, read from /proc (0 where unreadable)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # fields after the command name in parens
        children[ppid].append(int(entry.name))
    total, todo, page = 0, [root_pid], os.sysconf("SC_PAGE_SIZE")
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
    return total


# ----------------------------------------------------------------------------- workers

WORKER_FLAG = "--worker"


def run_worker(script: str, mode: str, spec: dict[str, Any], tmp: Path, *, threads: int | None,
               timeout_s: float | None = None) -> tuple[dict, ChildRun]:
    """Run `python SCRIPT --worker MODE SPEC.json` (a measured pipeline of that script) in a
    child process and return (the dict it wrote, how the process went). The spec gets
    `started_at` (time.time() just before the start), from which a child can keep a budget."""
    spec_path = tmp / f"worker-{mode}.json"
    result_path = tmp / f"worker-{mode}-result.json"
    result_path.unlink(missing_ok=True)
    spec = {**spec, "threads": threads, "result_path": str(result_path)}
    spec["started_at"] = time.time()  # wall clock, shared with the child
    spec_path.write_text(json.dumps(spec))
    run = run_child([sys.executable, script, WORKER_FLAG, mode, str(spec_path)],
                    env=child_env(threads), timeout_s=timeout_s, label=mode)
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    return result, run


def worker_main(workers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> None:
    """Entry of a child started by run_worker: run workers[MODE](spec), write its dict."""
    mode, spec_path = sys.argv[2], Path(sys.argv[3])
    spec = json.loads(spec_path.read_text())
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    result = workers[mode](spec)
    result["torch_threads"] = torch.get_num_threads()
    Path(spec["result_path"]).write_text(json.dumps(result))


def is_worker_call() -> bool:
    return len(sys.argv) > 3 and sys.argv[1] == WORKER_FLAG


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so a timer read afterwards covers it (no-op on CPU)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- results


def add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", help="result file [benchmarks/results/NAME-<device>.json]")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in every measured child (OMP_NUM_THREADS) [torch's default]")
    parser.add_argument("--work-dir", default=None,
                        help="parent folder of the scratch folder (manifests, symlinks, runs) [system temp]")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder for inspection")


def add_cache_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--warm-cache", action="store_true",
                        help="clarivis runs use the normal decode cache ($CLARIVIS_CACHE_DIR or "
                             "~/.cache/clarivis; warm after an earlier run) instead of a fresh empty "
                             "folder each (cold start)")


def clarivis_cache(args: argparse.Namespace, folder: Path) -> Path | None:
    """A fresh cache folder for one clarivis run, or None (the user's cache) with --warm-cache."""
    return None if args.warm_cache else folder


def write_result(result: dict[str, Any], json_arg: str | None, name: str, device: str) -> Path:
    path = Path(json_arg) if json_arg else RESULTS_DIR / f"{name}-{device_tag(device)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete lines of a JSON-lines file that may still be being written."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line still being written
    return records


def read_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def fmt_ips(value: float | None) -> str:
    return f"{value:,.0f} img/s" if value else "n/a"


def fmt_ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def fmt_gib(mib: float | None) -> str:
    return f"{mib / 1024:.2f}" if mib else "n/a"


# ----------------------------------------------------------------------------- servers in a child


def free_port() -> int:
    """A loopback port nobody listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    """Poll the service's /readyz until 200; SystemExit if `proc` exits or time runs out."""
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
