"""What the container tests need: the Dockerfiles read as instructions, the local package indexes
pip is configured with, and a container engine that can build and run here (or the exact reason
none can)."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
# Base images the Dockerfiles accept, looked for in the engine's local storage only (tests never
# pull): the Dockerfiles' default, and what docker/base-image.sh builds from Debian's packages.
BASE_IMAGES = ("docker.io/library/python:3.11-slim-bookworm", "python:3.11-slim-bookworm",
               "localhost/clarivis-base:bookworm")
BASE_ENV = "CLARIVIS_BASE_IMAGE"  # another local base image to use
# Folders of wheels to add to pip's local sources for the image build (os.pathsep-separated), for
# what a local mirror lacks: `pip download --no-deps -d DIR PACKAGE` once, by hand.
WHEELS_ENV = "CLARIVIS_CONTAINER_WHEELS"
# Limits passed to every container: an engine's defaults (podman: 1048576 open files) can exceed
# what an unprivileged-ish host allows, and the runtime then fails in setrlimit. 8192 processes
# bound a build step run as root too (RLIMIT_NPROC counts the user's processes host-wide).
NPROC = 8192


# ----------------------------------------------------------------------------- Dockerfiles

@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, USER, ...
    args: str  # the rest of the logical line, continuations joined


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def last(self, keyword: str) -> Instruction | None:
        found = [i for i in self.instructions if i.keyword == keyword]
        return found[-1] if found else None


def instructions(text: str) -> list[Instruction]:
    """The logical lines of a Dockerfile: comments dropped (also inside continued lines, as
    Docker does), backslash continuations joined."""
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical = (pending + line).strip()
        pending = ""
        keyword, _, args = logical.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    if pending:
        raise ValueError("the Dockerfile ends inside a continued line")
    return out


def stages(path: Path) -> tuple[list[Instruction], list[Stage]]:
    """(instructions before the first FROM, the stages in order)."""
    head: list[Instruction] = []
    found: list[Stage] = []
    for ins in instructions(path.read_text()):
        if ins.keyword == "FROM":
            parts = ins.args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            found.append(Stage(parts[0], name))
        elif found:
            found[-1].instructions.append(ins)
        else:
            head.append(ins)
    return head, found


def exec_form(args: str) -> list[str] | None:
    """The JSON array of an exec-form CMD/ENTRYPOINT, else None (shell form)."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def healthcheck(args: str) -> tuple[dict[str, str], list[str] | None]:
    """(options such as interval, the exec-form test command or None) of a HEALTHCHECK."""
    options, rest = {}, args
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        key, _, value = option[2:].partition("=")
        options[key] = value
        rest = rest.strip()
    keyword, _, command = rest.partition(" ")
    return options, exec_form(command) if keyword.upper() == "CMD" else None


# ----------------------------------------------------------------------------- package indexes

@dataclass
class LocalIndex:
    """pip's local sources: file:// indexes and find-links folders, and the host folders that
    hold them (what a build must see at the same paths)."""

    index_urls: list[str]
    find_links: list[str]
    mounts: list[Path]

    def __bool__(self) -> bool:
        return bool(self.index_urls or self.find_links)

    def pip_env(self) -> dict[str, str]:
        env = {"PIP_INDEX_URL": self.index_urls[0]} if self.index_urls else {"PIP_NO_INDEX": "1"}
        if len(self.index_urls) > 1:
            env["PIP_EXTRA_INDEX_URL"] = " ".join(self.index_urls[1:])
        if self.find_links:
            env["PIP_FIND_LINKS"] = " ".join(self.find_links)
        return env


def local_index() -> LocalIndex:
    """The file:// indexes and local find-links of this machine's pip configuration (its config
    files and PIP_* variables) and $CLARIVIS_CONTAINER_WHEELS: where a build can install from
    without the network."""
    done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                          text=True, timeout=60)
    values: dict[str, list[str]] = {"index-url": [], "extra-index-url": [], "find-links": []}
    for line in done.stdout.splitlines():
        key, _, value = line.partition("=")
        option = key.rsplit(".", 1)[-1]
        if option in values:
            values[option] += value.strip().strip("'\"").split()
    indexes, links, mounts = [], [], []
    for url in dict.fromkeys(values["index-url"] + values["extra-index-url"]):
        if url.startswith("file://") and Path(urlparse(url).path).is_dir():
            indexes.append(url)
            # a simple index links its files relative to itself (../../files/...): the folder
            # above the index, mounted at the same path, holds both
            mounts.append(Path(urlparse(url).path).parent)
    extra = [p for p in os.environ.get(WHEELS_ENV, "").split(os.pathsep) if p]
    for link in dict.fromkeys(values["find-links"] + extra):
        path = Path(urlparse(link).path if link.startswith("file://") else link)
        if path.is_dir():
            links.append(str(path))
            mounts.append(path)
    return LocalIndex(indexes, links, list(dict.fromkeys(mounts)))


# ----------------------------------------------------------------------------- engines

@dataclass
class Engine:
    """A container engine that ran a container here, with the flags it needed."""

    argv: list[str]  # the program and its global flags, e.g. ["podman", "--runtime", "runc"]
    run_flags: list[str]  # flags `run` and `build` need on this host (limits)
    base_image: str
    attempts: list[str]  # what was tried before it worked

    @property
    def name(self) -> str:
        return Path(self.argv[0]).name

    def __call__(self, *args: str, check: bool = True, timeout: float = 120,
                 **kw) -> subprocess.CompletedProcess:
        done = subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=timeout, **kw)
        if check and done.returncode != 0:
            command = " ".join([*self.argv, *args])
            raise AssertionError(f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done


def _last_line(done: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()
             and "systemd" not in ln]  # podman's healthcheck-timer notices on hosts without systemd
    return lines[-1].strip() if lines else f"exit {done.returncode}"


def limit_flags() -> list[str]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    files = min(soft, 65536) if soft != resource.RLIM_INFINITY else 65536
    procs, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    procs = NPROC if procs == resource.RLIM_INFINITY else min(procs, NPROC)
    return ["--ulimit", f"nofile={files}:{files}", "--ulimit", f"nproc={procs}:{procs}"]


def _local_base(argv: list[str]) -> str | None:
    wanted = [os.environ[BASE_ENV]] if os.environ.get(BASE_ENV) else list(BASE_IMAGES)
    for image in wanted:
        done = subprocess.run([*argv, "image", "inspect", image], capture_output=True, text=True, timeout=60)
        if done.returncode == 0:
            return image
    return None


def find_engine() -> tuple[Engine | None, str]:
    """(an engine that ran a container here, '') or (None, why not: every attempt and the one
    line its error ended with)."""
    attempts: list[str] = []
    for program in ("podman", "docker"):
        path = shutil.which(program)
        if path is None:
            attempts.append(f"{program}: not installed")
            continue
        if program == "docker":
            done = subprocess.run([path, "info"], capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                attempts.append(f"docker info: {_last_line(done)}")
                continue
        base = _local_base([path])
        if base is None:
            attempts.append(f"{program}: no base image in local storage ({', '.join(BASE_IMAGES)} or "
                            f"${BASE_ENV}); tests never pull: run `sh docker/base-image.sh {program}`")
            continue
        variants = [([path], []), ([path], limit_flags())]
        if program == "podman" and shutil.which("runc"):
            # crun refuses hosts whose cgroup v2 hierarchy holds controllers beside v1 ("hybrid")
            variants.append(([path, "--runtime", "runc"], limit_flags()))
        for argv, flags in variants:
            done = subprocess.run([*argv, "run", "--rm", "--network", "none", *flags, base, "python3", "-c",
                                   "print('ok')"], capture_output=True, text=True, timeout=300)
            if done.returncode == 0 and done.stdout.strip().endswith("ok"):
                return Engine(argv, flags, base, attempts), ""
            attempts.append(f"{' '.join([Path(argv[0]).name, *argv[1:]])} run {' '.join(flags)}: "
                            f"{_last_line(done)}")
    return None, "; ".join(attempts)


def image_size_mb(engine: Engine, image: str) -> float:
    return int(engine("image", "inspect", "--format", "{{.Size}}", image).stdout.strip()) / 1e6


def health_status(engine: Engine, container: str) -> str:
    """The HEALTHCHECK state (healthy, unhealthy, starting) as the engine records it."""
    for template in ("{{.State.Health.Status}}", "{{.State.Healthcheck.Status}}"):
        done = engine("inspect", "--format", template, container, check=False)
        value = done.stdout.strip()
        if done.returncode == 0 and value and not re.search(r"no value|<nil>", value):
            return value
    return ""


# ----------------------------------------------------------------------------- HTTP

def request(url: str, key: str | None = None, data: bytes | None = None,
            headers: dict | None = None) -> tuple[int, bytes]:
    """(status, body) of a GET, or a POST of `data`; `key` as X-API-Key."""
    auth = {"X-API-Key": key} if key else {}
    sent = urllib.request.Request(url, data=data, headers={**(headers or {}), **auth})
    try:
        with urllib.request.urlopen(sent, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def multipart(field: str, filename: str, content: bytes) -> tuple[bytes, dict]:
    """A multipart/form-data body holding one file, and its Content-Type header."""
    boundary = "clarivis-test-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n")
    body = head.encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
