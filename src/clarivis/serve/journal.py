"""The prediction log's local journal: what a server process has answered but not yet written to
the database, in append-only files, so an outage of the database (or a crash) loses nothing.

Layout, one folder per database (a journal is only ever replayed into the database it was meant
for):  ROOT/<dialect>-<12 hex of the database's identity>/
    url.txt                     the database, password hidden (for people; never parsed)
    <owner>.lock                held (flock) by the live process that owns <owner>.*.jsonl
    <owner>.<seq>.jsonl         segments: one JSON line per record() call, a list of row dicts
    rejected.jsonl              rows the database refused for good (not outages), with the reason

An owner is one PredictionLog object (pid + random suffix). It appends to its current segment;
its writer seals the segment (new appends go to the next one), inserts the sealed rows and only
then deletes the file. A lock file that nobody holds belongs to a dead owner (another worker, an
earlier run): its segments are adopted by whoever takes the lock first and replayed. flock (not
pid checks): the kernel releases it when the process dies, pids get reused. POSIX only, like the
service's process model (uvicorn workers).

Durability: each record() is one write() of whole lines on an O_APPEND file, so it survives a
crash of the process as soon as record() returns (the kernel holds it). Sealed segments are
fsynced when the database is unreachable, i.e. exactly when they will stay on disk a while; before
that a power loss can take the last instant's rows, as SQLite's synchronous=NORMAL can.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

log = logging.getLogger("clarivis.serve")

REJECTED_FILE = "rejected.jsonl"


@dataclass
class Segment:
    path: Path
    rows: int  # rows appended to it by its owner; 0 when adopted (unknown until read)


@dataclass
class Orphan:
    """A dead owner's lock (held by us while we replay) and its segments."""

    lock_path: Path
    lock_fd: int
    segments: list[Path]


def journal_folder(root: str | Path, dialect: str, identity: str) -> Path:
    """ROOT/<dialect>-<hash>: `identity` names the database (a resolved SQLite path, or the URL
    with its password hidden), so two databases never share a journal."""
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    return Path(root) / f"{dialect}-{digest}"


def encode_row(row: dict) -> dict:
    """A database row as JSON: the time as ISO text, image bytes as base64."""
    out = dict(row)
    out["time"] = row["time"].isoformat()
    if row.get("image") is not None:
        out["image"] = base64.b64encode(row["image"]).decode("ascii")
    return out


def decode_row(data: dict) -> dict:
    row = dict(data)
    row["time"] = datetime.fromisoformat(data["time"])
    if data.get("image") is not None:
        row["image"] = base64.b64decode(data["image"])
    return row


def read_segment(path: Path) -> Iterator[list[dict]]:
    """The rows of a segment, one list per record() call. A line torn by a crash (the last one,
    without its newline, or unparsable) is skipped with a warning: that record() never returned,
    so its request was never answered."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                log.warning("prediction journal %s: dropped a torn last line (a crash mid-write)", path.name)
                break
            try:
                yield [decode_row(r) for r in json.loads(line)]
            except (ValueError, KeyError, TypeError):
                log.warning("prediction journal %s: line %d is not a journal line; skipped",
                            path.name, number)


class Journal:
    """One owner's segments in `folder`, plus the adoption of dead owners' segments."""

    def __init__(self, folder: Path, description: str = "") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        if description and not (folder / "url.txt").exists():
            (folder / "url.txt").write_text(description + "\n")
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._lock_path = folder / f"{self.owner}.lock"
        # Locked under a name adopters ignore, then renamed: a lock file they can see is always
        # held, so none can take a starting owner for a dead one.
        hidden = folder / f".{self.owner}.lock.new"
        self._lock_fd = _try_lock(hidden, create=True)
        if self._lock_fd is None:  # a fresh random name: only a broken file system gets here
            raise OSError(f"cannot lock {hidden}")
        os.rename(hidden, self._lock_path)
        self._mutex = threading.Lock()  # appends (request threads) against seal (the writer)
        self._seq = 0
        self._fd: int | None = None
        self._current: Segment | None = None

    def append(self, rows: list[dict]) -> None:
        """Write the rows as one line (all or none of them survive a crash). Raises OSError."""
        data = (json.dumps([encode_row(r) for r in rows], separators=(",", ":")) + "\n").encode()
        with self._mutex:
            if self._fd is None:
                self._seq += 1
                path = self.folder / f"{self.owner}.{self._seq:06d}.jsonl"
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._current = Segment(path, 0)
            view = memoryview(data)
            while view:  # a regular file takes it in one write unless the disk is full
                written = os.write(self._fd, view)
                view = view[written:]
            self._current.rows += len(rows)

    def seal(self) -> Segment | None:
        """Close the current segment and return it (None when nothing was appended since the last
        seal); the next append starts a new one."""
        with self._mutex:
            if self._fd is None:
                return None
            os.close(self._fd)
            segment, self._fd, self._current = self._current, None, None
            return segment

    def adopt_orphans(self) -> list[Orphan]:
        """Lock files nobody holds, now held by us, with their segments."""
        orphans = []
        for lock_path in sorted(self.folder.glob("*.lock")):
            if lock_path == self._lock_path:
                continue
            fd = _try_lock(lock_path, create=False)
            if fd is None:
                continue  # alive (or just adopted by someone else)
            owner = lock_path.name[: -len(".lock")]
            segments = sorted(self.folder.glob(f"{owner}.*.jsonl"))
            orphans.append(Orphan(lock_path, fd, segments))
        return orphans

    def reject(self, row: dict, reason: str) -> None:
        """Keep a row the database refused for good (a constraint, not an outage), with why."""
        line = json.dumps({"reason": reason, "row": encode_row(row)}, separators=(",", ":")) + "\n"
        with self._mutex, open(self.folder / REJECTED_FILE, "a") as f:
            f.write(line)

    def sync(self, paths: list[Path]) -> None:
        """fsync these files and the folder: they will stay on disk while the database is away."""
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        dir_fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def close(self, *, remove: bool) -> None:
        """Release the lock; with `remove` (nothing left to replay) delete the lock file too.
        Segments still on disk are adopted by the next process that opens this journal."""
        self.seal()
        release(self._lock_path, self._lock_fd, remove=remove)


def release(lock_path: Path, fd: int, *, remove: bool) -> None:
    """Unlink while still holding the lock: whoever opens it after that finds no segments."""
    if remove:
        lock_path.unlink(missing_ok=True)
    os.close(fd)  # closing the descriptor releases the flock


def remove_segment(path: Path) -> None:
    """After its rows are committed. A crash just before this replays them: the rows' uids make
    the second insert a no-op, so nothing is written twice."""
    path.unlink(missing_ok=True)


def _try_lock(path: Path, *, create: bool) -> int | None:
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if not create and not path.exists():  # unlinked by its adopter between our open and flock
        os.close(fd)
        return None
    return fd
