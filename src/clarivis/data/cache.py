"""Decode once, train many times: a uint8 tensor cache of the resized dataset in a memory-mapped
`.npy` file, keyed by the files' identity (path, size, mtime) and the preprocessing. A second run,
a resumed run or another DDP rank opens the file instead of decoding again; a changed, added or
removed file changes the key, so the cache is rebuilt. Also caches the decode check (which files
are readable, their sizes), so a warm start skips decoding entirely.

Layout in the cache folder ($CLARIVIS_CACHE_DIR, else $XDG_CACHE_HOME/clarivis, else
~/.cache/clarivis):
    scan-<key>.json          readable files, skipped files with reasons, image sizes
    pixels-<key>.npy         uint8 (N, 3, S, S), one row per readable sample, in sample order
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from clarivis.data.dataset import model_pixels
from clarivis.data.sources import Sample
from clarivis.data.transforms import Preprocess, resize_transform
from clarivis.errors import ImageDecodeError

CACHE_ENV = "CLARIVIS_CACHE_DIR"
# Largest pixel cache kept: 4 GiB holds CIFAR-10 at 32 px 25 times over, or ~28k images at 224 px.
# Larger datasets stream through the DataLoader instead.
DEFAULT_CACHE_BUDGET = 4 * 1024**3


def cache_dir() -> Path:
    """Where caches live; an env var moves them (e.g. to a fast local disk or a test folder)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clarivis"


def files_key(samples: list[Sample], extra: str = "") -> str:
    """Identity of exactly these files in this order: absolute path, label, size and mtime.
    Unlike the dataset fingerprint (which must survive a copy), any edit changes it."""
    digest = hashlib.sha256(extra.encode())
    for s in samples:
        try:
            st = os.stat(s.path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(f"{os.path.abspath(s.path)}\0{s.label}\0{stamp}\n".encode())
    return digest.hexdigest()[:24]


def preprocess_key(pp: Preprocess) -> str:
    """Only what changes the cached pixels: size, resize mode, interpolation, padding colour."""
    crop = [pp.crop_pct] if pp.resize_mode == "crop" and pp.crop_pct != 1.0 else []
    window = [["window", *pp.window]] if pp.window is not None else []  # DICOM decoding
    return json.dumps([pp.img_size, pp.resize_mode, pp.interpolation,
                       [round(m * 255) for m in pp.mean], "jpeg-reduce-2x", *crop, *window])


def cache_bytes(n_images: int, img_size: int) -> int:
    return n_images * 3 * img_size * img_size


# ----------------------------------------------------------------------------- scan record


def load_scan_record(samples: list[Sample]) -> dict | None:
    path = cache_dir() / f"scan-{files_key(samples)}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent or half-written: scan again


def save_scan_record(samples: list[Sample], readable: list[bool], skipped: list[tuple[str, str]],
                     sizes: list[tuple[int, int]]) -> None:
    """Best effort: an unwritable cache folder only costs the next run a decode pass."""
    record = {"readable": readable, "skipped": skipped, "sizes": sizes}
    try:
        _atomic_write_text(cache_dir() / f"scan-{files_key(samples)}.json", json.dumps(record))
    except OSError:
        pass


# ----------------------------------------------------------------------------- pixel cache


def open_pixel_cache(
    samples: list[Sample],
    preprocess: Preprocess,
    *,
    decoded: list[torch.Tensor | None] | None = None,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, bool]:
    """uint8 (N, 3, S, S) pixels of `samples` after the deterministic resize, memory-mapped
    from the cache file; built first when missing. `decoded` (uint8 (3, H, W) per sample, from
    the decode check) is consumed entry by entry while building, so the dataset is never held
    twice in RAM. Returns (pixels, was_cached)."""
    path = cache_dir() / f"pixels-{files_key(samples, preprocess_key(preprocess))}.npy"
    if path.exists():
        try:
            return _open(path, len(samples), preprocess.img_size), True
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # damaged file: rebuild below
    path.parent.mkdir(parents=True, exist_ok=True)
    _build(path, samples, preprocess, decoded, workers, on_progress)
    return _open(path, len(samples), preprocess.img_size), False


def _open(path: Path, n: int, size: int) -> torch.Tensor:
    # Copy-on-write mapping: torch wants a writable buffer, and the file is never changed.
    array = np.load(path, mmap_mode="c")
    if array.shape != (n, 3, size, size) or array.dtype != np.uint8:
        raise ValueError(f"{path} holds {array.shape} {array.dtype}, expected ({n}, 3, {size}, {size})")
    return torch.from_numpy(array)


def _build(path, samples, preprocess, decoded, workers, on_progress) -> None:
    size = preprocess.img_size
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(samples), 3, size, size))
    resize = resize_transform(preprocess)

    def fill(i: int) -> None:
        preloaded = None
        if decoded is not None:  # take it, freeing the full-size copy once its row is written
            preloaded, decoded[i] = decoded[i], None
        out[i] = resize(_decode(samples[i].path, size, preloaded, preprocess.window)).numpy()

    try:
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            for done, _ in enumerate(pool.map(fill, range(len(samples))), start=1):
                if on_progress is not None and done % 1024 == 0:
                    on_progress(done)
        out.flush()
        out = None  # unmap before the rename
        os.replace(tmp, path)  # readers only ever see a complete file
    finally:
        tmp.unlink(missing_ok=True)


def _decode(path: str, img_size: int, preloaded: torch.Tensor | None,
            window: tuple[float, float] | None) -> torch.Tensor:
    try:
        return model_pixels(path, img_size, preloaded, window=window)
    except ImageDecodeError:
        # Readable at the check, unreadable now: the file changed under us. A black row keeps the
        # cache aligned; the next run's key differs (mtime changed) and rebuilds it.
        return torch.zeros(3, 1, 1, dtype=torch.uint8)


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
