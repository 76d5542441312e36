"""The container files checked without an engine: the Dockerfiles' instructions (non-root user,
HEALTHCHECK on /healthz, exec-form entry, multi-stage, no secret baked in), the compose file's
services, the slim image's requirement list against pyproject.toml, and that list installed
into a fresh venv without torch, where `clarivis serve --backend onnx` answers."""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from tests.container.engine import (
    DOCKER,
    ROOT,
    exec_form,
    healthcheck,
    instructions,
    multipart,
    request,
    stages,
)
from tests.installs import canonical, closure, extra_names, link_site, project
from tests.tiny import held_out

from clarivis.runtime import Predictor

DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "cuda": DOCKER / "Dockerfile.cuda"}
MODEL_DIR = "/srv/clarivis/model"  # where the images serve the bundle from (its parent is the run folder)
PORT = "8000"
HEAVY = ("torch", "torchvision", "timm")


def _final(kind: str):
    return stages(DOCKERFILES[kind])[1][-1]


def _requirements() -> dict[str, Requirement]:
    lines = (DOCKER / "requirements-cpu.txt").read_text().splitlines()
    reqs = [Requirement(line.split("#")[0]) for line in lines if line.split("#")[0].strip()]
    return {canonical(r.name): r for r in reqs}


# ----------------------------------------------------------------------------- Dockerfiles

@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfile_is_multi_stage_from_one_base_argument(kind):
    head, found = stages(DOCKERFILES[kind])
    assert [i.args.split("=")[0] for i in head if i.keyword == "ARG"] == ["BASE_IMAGE"]
    assert len(found) == 2 and found[0].name == "build"
    assert {s.base for s in found} == {"${BASE_IMAGE}"}  # the venv is copied across: same python
    final = found[-1]
    copies = [i.args for i in final.instructions if i.keyword == "COPY"]
    assert copies == ["--from=build /opt/clarivis /opt/clarivis"]  # only the venv, no sources
    # the wheel is built from this checkout and installed
    build_runs = " ".join(i.args for i in found[0].instructions if i.keyword == "RUN")
    assert "pip wheel --no-deps" in build_runs and "/wheels/clarivis-*.whl" in build_runs


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfile_runs_as_a_fixed_non_root_user(kind):
    final = _final(kind)
    user = final.last("USER")
    assert user is not None
    uid, _, gid = user.args.partition(":")
    assert uid.isdigit() and int(uid) >= 1000 and gid.isdigit() and int(gid) != 0
    # the user exists in the image (useradd with that uid) and nothing after USER switches back
    runs = " ".join(i.args for i in final.instructions if i.keyword == "RUN")
    assert f"--uid {uid}" in runs and f"--gid {gid}" in runs
    after = final.instructions[final.instructions.index(user) + 1:]
    assert not [i for i in after if i.keyword in ("USER", "RUN")]


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_healthcheck_probes_healthz_with_python_urllib(kind):
    final = _final(kind)
    check = final.last("HEALTHCHECK")
    assert check is not None
    options, command = healthcheck(check.args)
    assert {"interval", "timeout", "start-period", "retries"} <= set(options)
    assert command is not None and command[:2] == ["python", "-c"]  # exec form, no shell, no curl
    code = command[2]
    ast.parse(code)
    assert "urllib.request" in code and f"http://127.0.0.1:{PORT}/healthz" in code
    expose = final.last("EXPOSE")
    assert expose is not None and expose.args == PORT


@pytest.mark.parametrize(("kind", "backend"), [("cpu", ["--backend", "onnx"]),
                                               ("cuda", ["--backend", "torch", "--device", "cuda"])])
def test_entry_is_exec_form_serving_the_bundle_on_all_interfaces(kind, backend):
    final = _final(kind)
    entry, cmd = final.last("ENTRYPOINT"), final.last("CMD")
    assert exec_form(entry.args) == ["clarivis"]
    argv = exec_form(cmd.args)
    assert argv is not None and argv[:2] == ["serve", MODEL_DIR]
    assert argv[argv.index("--host") + 1] == "0.0.0.0" and argv[argv.index("--port") + 1] == PORT
    assert " ".join(backend) in " ".join(argv)
    # the run folder (parent of the bundle) is the service user's: the log's journal goes there
    runs = " ".join(i.args for i in final.instructions if i.keyword == "RUN")
    assert f"chown 10001:10001 {str(Path(MODEL_DIR).parent)}" in runs


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_no_secret_is_baked_in_and_the_log_url_is_settable(kind):
    final = _final(kind)
    env = " ".join(i.args for i in final.instructions if i.keyword in ("ENV", "ARG"))
    assert "CLARIVIS_API_KEY" not in env and "PASSWORD" not in env.upper()
    assert "CLARIVIS_DB_URL=sqlite:////data/predictions.db" in env
    assert "/opt/clarivis/bin" in env  # the venv's clarivis and python come first on PATH


def test_bundle_dockerfile_copies_the_bundle_readable_but_not_writable_by_the_user():
    _, (stage,) = stages(DOCKER / "Dockerfile.bundle")
    assert stage.base == "${IMAGE}"
    (copy,) = [i for i in stage.instructions if i.keyword == "COPY"]
    assert copy.args == f"--chown=0:0 --chmod=755 . {MODEL_DIR}"
    assert not [i for i in stage.instructions if i.keyword in ("USER", "CMD", "ENTRYPOINT")]  # the base's


def test_dockerignore_sends_only_what_the_build_copies():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*"  # an allow-list: .venv, .git, runs/, data/ never reach the engine
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "src", "docker"}
    copied = set()
    for path in DOCKERFILES.values():
        for ins in instructions(path.read_text()):
            if ins.keyword == "COPY" and not ins.args.startswith("--from"):
                copied |= {Path(src).parts[0] for src in ins.args.split()[:-1]}
    assert copied <= allowed


def test_instruction_parser_joins_continuations_and_drops_comments():
    text = "FROM a AS b\n# c\nRUN x \\\n  # inside\n  && y\nCMD [\"p\", \"q\"]\n"
    parsed = [(i.keyword, i.args) for i in instructions(text)]
    assert parsed == [("FROM", "a AS b"), ("RUN", "x  && y"), ("CMD", '["p", "q"]')]
    assert exec_form('["p", "q"]') == ["p", "q"] and exec_form("p q") is None


# ----------------------------------------------------------------------------- compose

def test_compose_runs_the_service_after_a_healthy_postgres():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"db", "api"}
    db, api = services["db"], services["api"]
    assert db["image"].startswith("postgres:15")
    assert db["healthcheck"]["test"][0] == "CMD" and "pg_isready" in db["healthcheck"]["test"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in db["volumes"])
    assert api["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert (DOCKER / api["build"]["context"] / api["build"]["dockerfile"]).resolve() == DOCKERFILES["cpu"]
    # secrets come from the environment / docker/.env, required, never written here
    assert api["environment"]["CLARIVIS_API_KEY"].startswith("${CLARIVIS_API_KEY:?")
    assert db["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    url = api["environment"]["CLARIVIS_DB_URL"]
    assert url == "postgresql+psycopg://clarivis:${POSTGRES_PASSWORD}@db:5432/clarivis"
    assert db["environment"]["POSTGRES_USER"] == "clarivis" == db["environment"]["POSTGRES_DB"]
    # the same entry as the image's CMD, with the model where the volume puts it
    assert api["command"][:2] == ["serve", MODEL_DIR] and "--host" in api["command"]
    assert any(v.endswith(f":{MODEL_DIR}:ro") for v in api["volumes"])
    assert any(v.split(":")[1] == str(Path(MODEL_DIR).parent) for v in api["volumes"])  # the journal
    named = {v.split(":")[0] for s in services.values() for v in s["volumes"]
             if not v.startswith(("$", ".", "/"))}
    assert named == set(compose["volumes"])
    example = (DOCKER / "env.example").read_text()
    assert "CLARIVIS_API_KEY=\n" in example and "POSTGRES_PASSWORD=\n" in example  # empty: to fill in


# ----------------------------------------------------------------------------- the slim requirements

def test_slim_requirements_are_the_runtime_cli_and_serve_extra_at_pyprojects_floors():
    reqs = _requirements()
    assert not set(reqs) & set(HEAVY)
    declared = {canonical(Requirement(r).name): Requirement(r)
                for r in project()["dependencies"] + project()["optional-dependencies"]["serve"]}
    runtime = tomllib.loads((ROOT / "packages" / "clarivis-runtime" / "pyproject.toml").read_text())
    runtime_names = {canonical(Requirement(r).name) for r in runtime["project"]["dependencies"]}
    assert runtime_names | extra_names("serve") <= set(reqs)
    for name, req in reqs.items():
        if name in declared:  # psycopg rides along for PostgreSQL URLs before pyproject names it
            assert req.specifier == declared[name].specifier, name


# ----------------------------------------------------------------------------- a slim venv, no torch

def _run(*cmd, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", **kw.pop("env", {})}
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=300, **kw)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _installed(name: str) -> bool:
    try:
        md.distribution(name)
        return True
    except md.PackageNotFoundError:
        return False


@pytest.fixture(scope="module")
def slim_venv(tmp_path_factory) -> Path:
    """A fresh venv holding the clarivis wheel (--no-deps) and docker/requirements-cpu.txt's
    packages (linked from this venv, with what they need): the CPU image's Python, without it."""
    base = tmp_path_factory.mktemp("slim")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", base / "dist", ROOT)
    (wheel,) = (base / "dist").glob("clarivis-*.whl")
    names = {n for n in _requirements() if _installed(n)}
    missing = set(_requirements()) - names
    assert missing <= {"psycopg"}, f"not installed here: {missing}"  # only PostgreSQL's driver may lack
    deps = closure(names)
    assert not deps & set(HEAVY), sorted(deps & set(HEAVY))
    _run(sys.executable, "-m", "venv", "--without-pip", base / "venv")
    python = base / "venv" / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run(python, "-c", purelib).stdout.strip())
    (site / "slim-deps.pth").write_text(f"{link_site(deps, base / 'deps')}\n")
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel)
    return python


CLEAN = {"PYTHONPATH": "", "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow  # a wheel build and a venv: about 20 s on 2 cores
def test_slim_venv_imports_the_service_and_its_cli_without_torch(slim_venv):
    code = ("import json, sys, importlib.util\n"
            "import clarivis.serve.app, clarivis.serve.runner, clarivis.cli.serve\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm'))\n"
            "print(json.dumps({'torch': importlib.util.find_spec('torch') is not None, 'heavy': heavy,"
            " 'from': clarivis.serve.app.__file__}))")
    out = json.loads(_run(slim_venv, "-c", code, cwd=slim_venv.parents[1], env=CLEAN).stdout.splitlines()[-1])
    assert out == {"torch": False, "heavy": [], "from": out["from"]}
    assert Path(out["from"]).is_relative_to(slim_venv.parents[1])  # the wheel, not src/
    clarivis_cli = slim_venv.parent / "clarivis"
    help_text = _run(clarivis_cli, "serve", "--help", cwd=slim_venv.parents[1], env=CLEAN).stdout
    assert "--backend" in help_text and "--workers" in help_text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # the venv, a tiny export and a server start: about 40 s on 2 cores
def test_slim_venv_serves_an_onnx_bundle_like_the_runtime(slim_venv, cnn_export, export_base, tmp_path):
    bundle, _ = cnn_export
    image = sorted(p for p in held_out(export_base).rglob("*.png"))[0]
    port, key = _free_port(), "slim-test-key"
    env = {**os.environ, **CLEAN, "CLARIVIS_API_KEY": key,
           "CLARIVIS_DB_URL": f"sqlite:///{tmp_path / 'predictions.db'}"}
    server = subprocess.Popen([slim_venv.parent / "clarivis", "serve", bundle, "--backend", "onnx",
                               "--port", str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if request(f"{base}/readyz", key)[0] == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, server.stdout.read()
            time.sleep(0.2)
        assert request(f"{base}/healthz")[0] == 200  # liveness needs no key
        body, headers = multipart("file", image.name, image.read_bytes())
        assert request(f"{base}/v1/predict", data=body, headers=headers)[0] == 401
        status, payload = request(f"{base}/v1/predict", key, data=body, headers=headers)
        assert status == 200, payload
        answer = json.loads(payload)
        assert answer["backend"] == "onnx"
        (row,) = answer["predictions"]
        (expected,) = Predictor(bundle).predict([image])
        assert row["label"] == expected.label
        assert row["confidence"] == pytest.approx(expected.confidence, abs=1e-5)
    finally:
        server.terminate()
        server.wait(timeout=30)
