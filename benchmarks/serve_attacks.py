"""Small requests that used to take the service down (issue 14, "limits that hold"), sent to
`clarivis serve` running in a child process; the server's peak RSS is sampled (its process tree)
while each request is answered.

  (a) decoded-pixel attacks, one request each:
      png-64x8000        64 blank 8000x8000 PNGs (12 MB in all: 4,096 MP to decode, ~12 GB)
      webp-64x8000       the same as lossless WebP (a few KB in all)
      png-5x7999         5 PNGs each just under the 64 MP per-image limit (320 MP): only the
                         per-request budget (--max-request-pixels, 256 MP) refuses it
      png-4x7999         4 of them (256 MP): within the budget, decoded one at a time and reduced;
                         shows what the largest admitted request costs
      done when: every over-budget request is 413 within a second, server RSS under 1.5 GiB
  (b) 100 idle connections (50 silent, 50 sending half a header line a byte at a time) held open
      while /healthz is asked 10 times; done when every answer comes within a second. The same
      run against uvicorn as `clarivis serve` configured it before (limit_concurrency=64, no
      header deadline) shows what it fixes.

    python benchmarks/serve_attacks.py --model-dir RUN/model
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import common

NAME = "serve_attacks"
RSS_LIMIT_MIB = 1.5 * 1024
ANSWER_LIMIT_S = 1.0
IDLE_SILENT = 50
IDLE_SLOW = 50
HEALTH_PROBES = 10
# `clarivis serve` before issue 14: uvicorn with limit_concurrency=64 and nothing else
OLD_SERVER = ("import sys, uvicorn; from clarivis.serve.app import create_app; "
              "uvicorn.run(create_app(sys.argv[1], db_url=sys.argv[2]), host='127.0.0.1', "
              "port=int(sys.argv[3]), log_level='warning', limit_concurrency=64)")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, help="a ModelBundle folder (RUN/model)")
    p.add_argument("--skip-old", action="store_true", help="skip (b) against the former uvicorn options")
    common.add_output_args(p)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    model_dir = Path(args.model_dir).resolve()
    print(f"{NAME}: encoding the payloads (blank 8000x8000 PNG and WebP, 7999x7999 PNG)", file=sys.stderr)
    payloads = make_payloads()
    result: dict[str, Any] = {"benchmark": NAME, "settings": {"model_dir": "/".join(model_dir.parts[-2:]),
                                                           "threads": args.threads},
                              "load_average_at_start": os.getloadavg()[0]}  # a shared machine slows it all
    with common.work_dir(args.work_dir, args.keep) as tmp:
        with Server.clarivis(model_dir, tmp / "serve.db", args.threads) as server:
            result["settings"]["limits"] = server.limits()
            result["pixel_attacks"] = {name: server.attack(files) for name, files in payloads.items()}
            result["idle_connections"] = server.idle_attack()
            result["server_baseline_rss_mib"] = server.baseline_mib
        if not args.skip_old:
            with Server.old(model_dir, tmp / "old.db", args.threads) as server:
                result["idle_connections_before"] = server.idle_attack()
    result["load_average_at_end"] = os.getloadavg()[0]
    result["done"] = verdict(result)
    result["machine"] = common.describe_machine("cpu")
    result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    path = common.write_result(result, args.json, NAME, "cpu")
    print(summary_line(result, path))


def make_payloads() -> dict[str, list[tuple[str, bytes]]]:
    from PIL import Image

    def encode(size: int, fmt: str, **options: Any) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (size, size)).save(buffer, format=fmt, **options)
        return buffer.getvalue()

    png, under = encode(8000, "PNG"), encode(7999, "PNG")
    webp = encode(8000, "WEBP", lossless=True)
    return {"png-64x8000": [(f"{i}.png", png) for i in range(64)],
            "webp-64x8000": [(f"{i}.webp", webp) for i in range(64)],
            "png-5x7999": [(f"{i}.png", under) for i in range(5)],
            "png-4x7999": [(f"{i}.png", under) for i in range(4)]}


class Server:
    """A service in a child process (its own session), on a free loopback port."""

    def __init__(self, command: list[str], threads: int | None) -> None:
        self.port = common.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [c.replace("{port}", str(self.port)) for c in command]
        self.threads = threads
        self.proc: subprocess.Popen | None = None
        self.baseline_mib = 0.0

    @classmethod
    def clarivis(cls, model_dir: Path, db: Path, threads: int | None) -> Server:
        return cls([sys.executable, "-m", "clarivis", "serve", str(model_dir), "--port", "{port}",
                    "--db", f"sqlite:///{db}"], threads)

    @classmethod
    def old(cls, model_dir: Path, db: Path, threads: int | None) -> Server:
        return cls([sys.executable, "-c", OLD_SERVER, str(model_dir), f"sqlite:///{db}", "{port}"], threads)

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(self.command, env=common.child_env(self.threads),
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        common.wait_ready(self.url, self.proc)
        time.sleep(0.5)
        self.baseline_mib = self.rss_mib()
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def rss_mib(self) -> float:
        assert self.proc is not None
        return common.tree_rss_bytes(self.proc.pid) / common.MIB

    def limits(self) -> dict:
        import httpx

        return httpx.get(f"{self.url}/v1/model", timeout=10).json()["limits"]

    def attack(self, files: list[tuple[str, bytes]]) -> dict:
        """POST the files in one request; status, seconds to the answer, the server's peak RSS."""
        import httpx

        before = self.rss_mib()
        peak, stop = [before], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak.append(self.rss_mib())
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        with httpx.Client(base_url=self.url, timeout=300) as client:
            client.get("/healthz")  # the connection is open before the clock starts
            sampler.start()
            start = time.perf_counter()
            try:
                r = client.post("/v1/predict", files=[("file", f) for f in files])
                status, detail = r.status_code, (r.json().get("detail") if r.status_code != 200 else None)
            except httpx.HTTPError as err:
                status, detail = None, f"{type(err).__name__}: {err}"
            seconds = time.perf_counter() - start
        time.sleep(0.1)
        stop.set()
        sampler.join()
        out = {"files": len(files), "upload_mb": round(sum(len(d) for _, d in files) / 1e6, 2),
               "status": status, "seconds": round(seconds, 3), "detail": detail,
               "rss_before_mib": round(before, 1), "peak_rss_mib": round(max(peak), 1)}
        print(f"  {len(files)} files: {status} in {seconds:.2f} s, RSS {before:.0f} -> {max(peak):.0f} MiB"
              + (f" ({detail})" if detail else ""), file=sys.stderr)
        return out

    def idle_attack(self) -> dict:
        """IDLE_SILENT + IDLE_SLOW connections held open while /healthz is probed."""
        import httpx

        silent, slow = [], []
        try:
            for _ in range(IDLE_SILENT):
                silent.append(socket.create_connection(("127.0.0.1", self.port)))
            for _ in range(IDLE_SLOW):
                s = socket.create_connection(("127.0.0.1", self.port))
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                slow.append(s)
            probes = []
            for _ in range(HEALTH_PROBES):
                for s in slow:
                    try:
                        s.sendall(b"a")  # one more byte of a header line that never ends
                    except OSError:
                        pass  # closed by the server's header deadline
                start = time.perf_counter()
                try:
                    status = httpx.get(f"{self.url}/healthz", timeout=10).status_code
                except httpx.HTTPError as err:
                    status = type(err).__name__
                probes.append({"status": status, "seconds": round(time.perf_counter() - start, 4)})
                time.sleep(0.3)
        finally:
            for s in silent + slow:
                s.close()
        seconds = [p["seconds"] for p in probes]
        out = {"silent": IDLE_SILENT, "slow": IDLE_SLOW, "probes": probes,
               "statuses": sorted({str(p["status"]) for p in probes}),
               "max_seconds": max(seconds), "median_seconds": statistics.median(seconds)}
        print(f"  {IDLE_SILENT + IDLE_SLOW} idle connections: /healthz {out['statuses']}, max "
              f"{out['max_seconds'] * 1000:.0f} ms", file=sys.stderr)
        return out


def verdict(r: dict) -> dict:
    over_budget = [v for k, v in r["pixel_attacks"].items() if k != "png-4x7999"]
    admitted = r["pixel_attacks"]["png-4x7999"]
    idle = r["idle_connections"]
    return {
        "over_budget_413_within_1s": all(v["status"] == 413 and v["seconds"] < ANSWER_LIMIT_S
                                         for v in over_budget),
        "rss_under_1.5_gib": all(v["peak_rss_mib"] < RSS_LIMIT_MIB for v in r["pixel_attacks"].values()),
        "admitted_request_answered": admitted["status"] == 200,
        "healthz_within_1s_with_100_idle": (idle["statuses"] == ["200"]
                                            and idle["max_seconds"] < ANSWER_LIMIT_S),
    }


def summary_line(r: dict, path: Path) -> str:
    parts = [f"{k} {v['status']} {v['seconds']:.2f}s {v['peak_rss_mib']:.0f}MiB"
             for k, v in r["pixel_attacks"].items()]
    idle = r["idle_connections"]
    parts.append(f"100 idle: /healthz {','.join(idle['statuses'])} max {idle['max_seconds'] * 1000:.0f}ms")
    if "idle_connections_before" in r:
        before = r["idle_connections_before"]
        parts.append(f"before: {','.join(before['statuses'])} max {before['max_seconds'] * 1000:.0f}ms")
    done = "all done" if all(r["done"].values()) else "NOT done: " + ", ".join(k for k, v in r["done"].items()
                                                                             if not v)
    return f"{NAME}: " + " | ".join(parts) + f" | {done} | {path}"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
