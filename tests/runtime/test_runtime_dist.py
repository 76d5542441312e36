"""The torch-free distribution (packages/clarivis-runtime): built offline, installed into a fresh
venv that holds numpy, Pillow and onnxruntime (and what they need) but no torch, where it
predicts from a bundle that the full package exported, as the full package's runtime does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from tests.installs import closure, link_site
from tests.tiny import held_out

from clarivis.runtime import Predictor

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "packages" / "clarivis-runtime"
RUNTIME_DEPS = ("numpy", "pillow", "onnxruntime")  # the wheel's Requires-Dist, and only these
# pip without the network: no index, no version check (PIP_* are pip's own settings).
OFFLINE = {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}

pytestmark = pytest.mark.slow  # a venv and a wheel build: about 15 s on 2 cores


def _run(*cmd, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, **OFFLINE, **kw.pop("env", {})}
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=300, **kw)
    assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runtime-wheel")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", out, DIST)
    (found,) = out.glob("clarivis_runtime-*.whl")
    return found


@pytest.fixture(scope="module")
def runtime_venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv: the runtime wheel (--no-deps --no-index) plus numpy, Pillow and onnxruntime."""
    base = tmp_path_factory.mktemp("runtime-venv")
    _run(sys.executable, "-m", "venv", "--without-pip", base / "venv")  # this venv's pip installs
    python = base / "venv" / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run(python, "-c", purelib).stdout.strip())
    deps = link_site(closure(RUNTIME_DEPS), base / "deps")
    (site / "runtime-deps.pth").write_text(f"{deps}\n")
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel)
    return python


def test_wheel_holds_the_runtime_and_requires_only_its_three_packages(wheel):
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        meta = whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requirements = [Requirement(line.split(":", 1)[1]) for line in meta.splitlines()
                    if line.startswith("Requires-Dist:")]
    assert sorted(r.name.lower() for r in requirements if r.marker is None) == sorted(RUNTIME_DEPS)
    medical = {r.name.lower() for r in requirements if r.marker and r.marker.evaluate({"extra": "medical"})}
    assert medical == {"pydicom", "pylibjpeg", "pylibjpeg-libjpeg"}  # DICOM, behind its extra
    modules = {n for n in names if n.endswith(".py")}
    assert {"clarivis/runtime/predictor.py", "clarivis/data/dicom.py", "clarivis/extras.py"} <= modules
    # no torch-based module rides along (api, models, training, export, ...)
    assert not {n for n in modules if n.split("/")[1] in ("api.py", "models", "training", "export")}


def test_fresh_venv_without_torch_predicts_like_the_full_package(runtime_venv, cnn_export, export_base):
    bundle, _ = cnn_export
    images = sorted(str(p) for p in held_out(export_base).rglob("*") if p.is_file())[:12]
    code = textwrap.dedent(f"""
        import json, sys
        try:
            import torch  # noqa: F401
            has_torch = True
        except ModuleNotFoundError:
            has_torch = False
        import clarivis.runtime
        rows = clarivis.runtime.Predictor({str(bundle)!r}).predict({images!r}, top_k=2)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "timm"))
        try:
            clarivis.train  # the torch API is not in this distribution
            refusal = None
        except ImportError as err:
            refusal = str(err)
        print(json.dumps({{"torch": has_torch, "heavy": heavy, "from": clarivis.runtime.__file__,
                          "rows": [[r.label, r.confidence] for r in rows], "refusal": refusal}}))
    """)
    # Outside the repository, with a clean path: only the venv's own packages can be imported.
    env = {"PYTHONPATH": "", "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1"}
    done = _run(runtime_venv, "-c", code, cwd=runtime_venv.parent, env=env)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["torch"] is False and out["heavy"] == []
    assert "pip install clarivis" in out["refusal"]  # one line saying what to install
    assert Path(out["from"]).is_relative_to(runtime_venv.parents[1])  # the wheel, not src/
    expected = [[r.label, r.confidence] for r in Predictor(bundle).predict(images, top_k=2)]
    assert [label for label, _ in out["rows"]] == [label for label, _ in expected]
    assert [c for _, c in out["rows"]] == pytest.approx([c for _, c in expected], abs=1e-6)
    _run(sys.executable, "-m", "pip", "--python", runtime_venv, "check")  # its requirements are met


def test_fresh_venv_reads_dicom_with_the_medical_extra_only(runtime_venv, tmp_path):
    """Without pydicom a DICOM file is one line naming clarivis-runtime's extra; with the
    extra's packages on the path it decodes as the full package decodes it."""
    pytest.importorskip("pydicom")
    from tests.dicom_files import dicom_dataset, ramp, write_dicom

    from clarivis.data.io import load_image

    path = write_dicom(dicom_dataset(ramp(), WindowCenter=1000, WindowWidth=2000), tmp_path / "IM0001")
    code = textwrap.dedent(f"""
        import json
        from clarivis.data.io import load_image
        from clarivis.errors import ClarivisError
        try:
            pixels = list(load_image({str(path)!r}, window=(1500, 1000)).getdata())
            print(json.dumps({{"pixels": pixels}}))
        except ClarivisError as err:
            print(json.dumps({{"error": str(err)}}))
    """)
    env = {"PYTHONPATH": "", "PYTHONNOUSERSITE": "1"}
    without = json.loads(_run(runtime_venv, "-c", code, cwd=tmp_path, env=env).stdout)
    assert without == {"error": f"{path}: reading DICOM needs the 'medical' extra: "
                                'pip install "clarivis-runtime[medical]"'}
    medical = link_site(closure(("pydicom", "pylibjpeg", "pylibjpeg-libjpeg")), tmp_path / "medical")
    done = _run(runtime_venv, "-c", code, cwd=tmp_path, env={**env, "PYTHONPATH": str(medical)})
    expected = [list(p) for p in load_image(path, window=(1500, 1000)).getdata()]
    assert json.loads(done.stdout) == {"pixels": expected}
