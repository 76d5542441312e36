"""`clarivis serve --workers N` under load, on SQLite and on a real PostgreSQL, with and without a
database outage in the middle of the run: every request answered, every prediction logged exactly
once.

  sqlite           the default log, RUN/predictions.db style, a file in the scratch folder
  sqlite-outage    another connection holds the file locked (BEGIN EXCLUSIVE) for part of the run
  postgres         a PostgreSQL cluster this script starts (initdb + pg_ctl, Debian's binaries)
  postgres-outage  that server stopped (pg_ctl stop -m fast) for part of the run, then started

For each: requests sent, statuses, img/s, p50/p99 latency, rows in the log once the database is
back (polled while the server runs), and rows after the server stopped (its workers flush on
exit): both must equal the requests answered.

    python benchmarks/serve_load.py --model-dir RUN/model --data DIR [--requests 800 --workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

import common

NAME = "serve_load"
SCENARIOS = ("sqlite", "sqlite-outage", "postgres", "postgres-outage")
OUTAGE = (0.25, 0.6)  # the database is away from 25% to 60% of the requests sent
ROWS_WAIT_S = 120.0  # how long the log may take to catch up once the database is back


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, help="a ModelBundle folder (RUN/model)")
    p.add_argument("--data", required=True, help="images: class folders DIR/<class>/* or a flat folder")
    p.add_argument("--requests", type=int, default=800, help="requests per scenario [800]")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight [16]")
    p.add_argument("--workers", type=int, default=2, help="server processes [2]")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated [{','.join(SCENARIOS)}]")
    common.add_output_args(p)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    from predict_throughput import image_files

    payloads = [p.read_bytes() for p in image_files(Path(args.data), 32)]
    results = {}
    with common.work_dir(args.work_dir, args.keep) as tmp:
        postgres = None
        try:
            for scenario in args.scenarios.split(","):
                if scenario.startswith("postgres") and postgres is None:
                    postgres = Postgres()
                    if postgres.missing:
                        results[scenario] = {"skipped": postgres.missing}
                        print(f"{scenario}: skipped ({postgres.missing})", file=sys.stderr)
                        postgres = None
                        continue
                    postgres.start()
                results[scenario] = run_scenario(scenario, args, payloads, tmp, postgres)
        finally:
            if postgres is not None:
                postgres.stop()
                postgres.remove()
    result = {"benchmark": NAME,
              "settings": {"model_dir": "/".join(Path(args.model_dir).resolve().parts[-2:]),
                           "requests": args.requests, "concurrency": args.concurrency,
                           "workers": args.workers, "outage": OUTAGE},
              "scenarios": results, "machine": common.describe_machine("cpu"),
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = common.write_result(result, args.json, NAME, "cpu")
    parts = [f"{name} {r['ok']}/{r['sent']} ok, rows {r['rows_after_stop']}" for name, r in results.items()
             if "skipped" not in r]
    print(f"{NAME}: workers {args.workers}, c{args.concurrency}: " + "; ".join(parts) + f" -> {path}")


def run_scenario(scenario: str, args, payloads: list[bytes], tmp: Path, postgres) -> dict:
    if scenario.startswith("postgres"):
        db = postgres.new_database("log_" + scenario.replace("-", "_"))
    else:
        db = f"sqlite:///{tmp / f'{scenario}.db'}"
    outage = make_outage(scenario, tmp / f"{scenario}.db", postgres)
    proc, url = start_server(Path(args.model_dir), db, args.workers)
    try:
        sent = asyncio.run(load(url, payloads, args.requests, args.concurrency, outage))
        rows_live, caught_up_s = wait_rows(db, sent["ok"])
    finally:
        output = stop_server(proc)
    rows_after = count_rows(db)
    result = {**sent, "rows_while_serving": rows_live, "log_caught_up_s": caught_up_s,
              "rows_after_stop": rows_after, "server_errors": output.count("Traceback")}
    print(f"{scenario}: {sent['ok']}/{sent['sent']} answered 200 ({sent['statuses']}), "
          f"{sent['images_per_second']:.0f} img/s, p50 {sent['p50_ms']:.1f} ms, p99 {sent['p99_ms']:.1f} ms; "
          f"rows {rows_live} while serving, {rows_after} after stop", file=sys.stderr)
    return result


# ----------------------------------------------------------------------------- the load


async def load(url: str, payloads: list[bytes], n: int, concurrency: int, outage) -> dict:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    next_index = 0
    start_outage, end_outage = (int(f * n) for f in OUTAGE)
    async with httpx.AsyncClient(base_url=url, timeout=120,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker() -> None:
            nonlocal next_index
            while next_index < n:
                i = next_index
                next_index += 1
                if outage is not None and i == start_outage:
                    await asyncio.to_thread(outage.begin)
                if outage is not None and i == end_outage:
                    await asyncio.to_thread(outage.end)
                t = time.perf_counter()
                try:
                    image = payloads[i % len(payloads)]
                    r = await client.post("/v1/predict", files=[("file", (f"{i}.jpg", image))])
                    status = str(r.status_code)
                except httpx.HTTPError as err:
                    status = type(err).__name__
                latencies.append((time.perf_counter() - t) * 1000)
                statuses[status] = statuses.get(status, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    latencies.sort()
    return {"sent": n, "ok": statuses.get("200", 0), "statuses": statuses, "wall_s": round(wall, 2),
            "images_per_second": n / wall, "p50_ms": latencies[len(latencies) // 2],
            "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def make_outage(scenario: str, sqlite_file: Path, postgres):
    if not scenario.endswith("-outage"):
        return None
    return PostgresOutage(postgres) if scenario.startswith("postgres") else SqliteLock(sqlite_file)


class Outage:
    """The database away between begin() and end(), called from two load tasks: end() waits for
    begin() to have finished and for the outage to have lasted MIN_OUTAGE_S."""

    MIN_OUTAGE_S = 5.0

    def __init__(self) -> None:
        self.begun = threading.Event()
        self.since = 0.0

    def begin(self) -> None:
        self.take_down()
        self.since = time.monotonic()
        self.begun.set()
        print(f"  outage: {self.what} down", file=sys.stderr)

    def end(self) -> None:
        self.begun.wait()
        time.sleep(max(0.0, self.since + self.MIN_OUTAGE_S - time.monotonic()))
        self.bring_back()
        print(f"  outage over after {time.monotonic() - self.since:.1f} s", file=sys.stderr)


class SqliteLock(Outage):
    """Another process' writer holding the database: BEGIN EXCLUSIVE until end()."""

    what = "sqlite file locked (BEGIN EXCLUSIVE)"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path, self.conn = path, None

    def take_down(self) -> None:
        self.conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.conn.execute("BEGIN EXCLUSIVE")

    def bring_back(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


class PostgresOutage(Outage):
    what = "postgres stopped (pg_ctl stop -m fast)"

    def __init__(self, postgres) -> None:
        super().__init__()
        self.postgres = postgres

    def take_down(self) -> None:
        self.postgres.stop()

    def bring_back(self) -> None:
        self.postgres.start()


# ----------------------------------------------------------------------------- the server


def start_server(model_dir: Path, db: str, workers: int) -> tuple[subprocess.Popen, str]:
    port = common.free_port()
    cmd = [sys.executable, "-m", "clarivis", "serve", str(model_dir), "--port", str(port), "--db", db,
           "--workers", str(workers)]
    proc = subprocess.Popen(cmd, env=common.child_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    threading.Thread(target=_drain, args=(proc,), daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        common.wait_ready(url, proc, timeout_s=180)
    except SystemExit as err:
        stop_server(proc)
        raise SystemExit(f"{NAME}: {err}: {''.join(getattr(proc, 'output', [])[-20:])}") from None
    return proc, url


def _drain(proc: subprocess.Popen) -> None:
    proc.output = []  # type: ignore[attr-defined]
    for line in proc.stdout:
        proc.output.append(line)  # type: ignore[attr-defined]


def stop_server(proc: subprocess.Popen) -> str:
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: workers flush their logs and exit
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(0.2)
    return "".join(getattr(proc, "output", []))


def count_rows(db: str) -> int:
    from clarivis.serve.predlog import PredictionLog

    with PredictionLog(db) as log:
        return log.count()


def wait_rows(db: str, expected: int) -> tuple[int, float | None]:
    t0 = time.monotonic()
    rows = -1
    while time.monotonic() - t0 < ROWS_WAIT_S:
        rows = count_rows(db)
        if rows >= expected:
            return rows, round(time.monotonic() - t0, 2)
        time.sleep(0.5)
    return rows, None


# ----------------------------------------------------------------------------- PostgreSQL


class Postgres:
    """A throwaway cluster on a free loopback port. PostgreSQL refuses to run as root, so as root
    its commands run as the `postgres` user (Debian's package creates it)."""

    def __init__(self) -> None:
        # its own temporary folder, not inside the scratch one: that is private to root (0700),
        # and the postgres user must reach its data directory
        self.folder = folder = Path(tempfile.mkdtemp(prefix="clarivis-pg-"))
        self.bin = _pg_bin()
        self.missing = None if self.bin else "no PostgreSQL server binaries (apt-get install postgresql)"
        self.port = common.free_port()
        if self.bin:
            if os.geteuid() == 0:
                shutil.chown(folder, "postgres")
            self._run("initdb", "-D", str(folder), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.folder), "-w", "-l", str(self.folder / "log.txt"), "-o",
                  f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.folder), "-w", "-m", "fast", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def new_database(self, name: str) -> str:
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{NAME}: {tool} failed: {(done.stderr or done.stdout).strip()[-500:]}")


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return candidates[-1].parent if candidates else None


if __name__ == "__main__":
    main()
