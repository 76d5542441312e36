"""File-level data quality over a DatasetIndex: unreadable files, exact and near duplicates (and
train/val/test leakage through them), class imbalance, size outliers and unusual colour modes.
No model is involved; every file is read and decoded once, in processes."""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import statistics
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from clarivis.data.io import image_mode, load_image
from clarivis.data.sources import DatasetIndex
from clarivis.errors import ImageDecodeError
from clarivis.extras import needs

with needs("trust", "clarivis check"):
    import imagehash

# Largest Hamming distance (of 64 bits) between two perceptual hashes called near duplicates.
# Re-encoding (JPEG q85), +6-10% brightness, light noise or a resize move a pHash by 0-2 bits.
# Measured on CIFAR-10's 50k train JPEGs (32 px, where pHash is least stable): 271 pairs within
# 4 bits, 590 within 6, 1,300 within 8, 3,800 within 10; of a sample of pairs at 5-6 bits about
# 3 in 4 are true near copies (the rest: a small object on a plain sky), and the false pairs of
# flat, low-detail images grow fastest beyond that, so 6 is the default.
NEAR_DUPLICATE_DISTANCE = 6

# Size outliers: robust z-score of log(area) (median / MAD, Iglewicz-Hoaglin's 3.5 cut-off),
# and at least 4x the median area either way (2x per side) so a dataset of almost equal sizes,
# whose MAD is ~0, does not flag every image that is a few pixels off.
SIZE_Z_THRESHOLD = 3.5
SIZE_MIN_AREA_RATIO = 4.0

# Largest/smallest class above 1.5 is where training turns on balanced sampling (train.loop's
# IMBALANCE_THRESHOLD); at 10:1 the sampler repeats each minority image ~10x an epoch, which
# overfits it, so that becomes a warning.
IMBALANCE_RATIO_INFO = 1.5
IMBALANCE_RATIO_WARNING = 10.0

# Processes from this many files on: forking costs ~50 ms, a CIFAR file ~0.3 ms (as in scan).
_PROCESS_FROM = 2000
_BLOCK = 256  # rows per block of the pairwise Hamming distances: 256 x 50k x 8 B = 100 MB
# Near-duplicate search compares all pairs up to this many distinct hashes (a second or two) and
# multi-index hashing beyond, while each chunk of the hash keeps at least this many values per
# chunk (buckets fine enough to pay off: up to 8 bits apart).
_ALL_PAIRS_UP_TO = 20_000
_MIN_BUCKETS_PER_CHUNK = 8

_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_GRAY_MODES = frozenset({"L", "1"})


@dataclass
class FileInfo:
    """What one file is, read once: content hashes, perceptual hash, size and header mode."""

    path: str
    split: str
    label: str
    ok: bool = True
    reason: str = ""  # why it is unreadable, when not ok
    sha256: str = ""  # of the file's bytes
    pixel_hash: str = ""  # of the decoded upright RGB pixels and their shape
    phash: int = 0  # 64-bit perceptual hash of the decoded image
    width: int = 0  # px, as displayed (after EXIF orientation)
    height: int = 0
    mode: str = ""  # Pillow mode from the header, before conversion to RGB
    transparency: bool = False  # a palette or colour-key transparency (not an alpha channel)
    format: str = ""


@dataclass
class DuplicateGroup:
    # "exact": same bytes or same decoded pixels; "near": perceptual hashes close; "similar":
    # backbone features close (an edited copy: datacheck/similar_images.py)
    kind: str
    paths: list[str]
    splits: list[str]  # aligned with paths
    labels: list[str]  # aligned with paths
    distance: int = 0  # near: largest Hamming distance (bits of 64) from the first path
    similarity: float | None = None  # similar: the lowest feature cosine linking the group

    @property
    def leak(self) -> bool:
        """The same image sits in more than one of train/val/test."""
        return len(set(self.splits)) > 1

    @property
    def conflicting_labels(self) -> bool:
        """The same image is given more than one label."""
        return len(set(self.labels)) > 1

    def to_dict(self) -> dict:
        return {**asdict(self), "leak": self.leak, "conflicting_labels": self.conflicting_labels}


@dataclass
class QualityReport:
    files: list[FileInfo]
    corrupt: list[dict] = field(default_factory=list)  # {path, split, label, reason}
    duplicates: list[DuplicateGroup] = field(default_factory=list)
    imbalance: dict = field(default_factory=dict)
    size_outliers: list[dict] = field(default_factory=list)
    odd_modes: list[dict] = field(default_factory=list)

    @property
    def readable(self) -> list[FileInfo]:
        return [f for f in self.files if f.ok]


def check_quality(
    index: DatasetIndex, *, near_distance: int = NEAR_DUPLICATE_DISTANCE, workers: int | None = None
) -> QualityReport:
    """All file-level checks of a dataset; unreadable files are findings, never errors."""
    files = inspect_files(index, workers=workers)
    report = QualityReport(files)
    report.corrupt = [{"path": f.path, "split": f.split, "label": f.label, "reason": f.reason}
                      for f in files if not f.ok]
    good = report.readable
    report.duplicates = find_duplicates(good, near_distance=near_distance)
    report.imbalance = class_imbalance(index)
    report.size_outliers = size_outliers(good)
    report.odd_modes = odd_modes(good)
    return report


def inspect_files(index: DatasetIndex, *, workers: int | None = None) -> list[FileInfo]:
    """Read, hash and decode every file of the index in parallel, in index order."""
    items = [(s.path, split, s.label) for split, samples in index.splits.items() for s in samples]
    workers = workers or min(16, os.cpu_count() or 1)
    if workers > 1 and len(items) >= _PROCESS_FROM and "fork" in multiprocessing.get_all_start_methods():
        # fork: the workers start at once with Pillow loaded; only small results come back
        # (hashes and a few ints, never pixels), so the pipe is no bottleneck.
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    else:
        pool = ThreadPoolExecutor(max_workers=workers)
    with pool:
        return list(pool.map(_inspect, items, chunksize=64))


def _inspect(item: tuple[str, str, str]) -> FileInfo:
    path, split, label = item
    info = FileInfo(path, split, label)
    try:
        data = Path(path).read_bytes()
        # load_image is the safe decoder every stage uses: if it fails here, training would skip
        # the file too. It checks the pixel count before decoding, so read the header after it.
        image = load_image(data)
        # the stored mode (DICOM: from its header tags; only the accepted decoders are opened)
        info.mode, info.format, info.transparency = image_mode(data)
    except ImageDecodeError as err:
        info.ok, info.reason = False, str(err).removeprefix("<bytes>: ")
        return info
    except OSError as err:
        info.ok, info.reason = False, f"cannot read file ({err.strerror or err})"
        return info
    pixels = np.asarray(image, dtype=np.uint8)
    info.sha256 = hashlib.sha256(data).hexdigest()
    info.pixel_hash = hashlib.blake2b(pixels.tobytes() + repr(pixels.shape).encode(),
                                      digest_size=16).hexdigest()
    info.phash = int(str(imagehash.phash(image)), 16)
    info.width, info.height = image.size
    return info


# ----------------------------------------------------------------------------- duplicates


def find_duplicates(
    files: list[FileInfo], *, near_distance: int = NEAR_DUPLICATE_DISTANCE
) -> list[DuplicateGroup]:
    """Exact duplicate groups (same bytes or same pixels), then near-duplicate groups: connected
    components of perceptual hashes at most `near_distance` bits apart, over one file per exact
    group; a near group lists every copy. Leaking and mislabeled groups first."""
    # Union of "same bytes" and "same pixels" (a PNG and a lossless re-save of it).
    parent = list(range(len(files)))
    for key in ("sha256", "pixel_hash"):
        first: dict[str, int] = {}
        for i, f in enumerate(files):
            j = first.setdefault(getattr(f, key), i)
            if j != i:
                parent[find_root(parent, i)] = find_root(parent, j)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(files)):
        members[find_root(parent, i)].append(i)
    groups = [_group("exact", files, m) for m in members.values() if len(m) > 1]

    reps = sorted(members)  # one file per exact group (the group's lowest index)
    # Reps with equal hashes are linked to the first of them and the search runs over distinct
    # hashes: 10,000 plain white product shots would otherwise be 5e7 pairs.
    distinct, first_rep, which = np.unique(np.array([files[i].phash for i in reps], dtype=np.uint64),
                                           return_index=True, return_inverse=True)
    near_parent = list(range(len(reps)))
    for r, d in enumerate(which.tolist()):
        near_parent[find_root(near_parent, r)] = find_root(near_parent, int(first_rep[d]))
    for a, b in _near_pairs(distinct, near_distance):
        near_parent[find_root(near_parent, int(first_rep[a]))] = find_root(near_parent, int(first_rep[b]))
    near: dict[int, list[int]] = defaultdict(list)
    for r in range(len(reps)):
        near[find_root(near_parent, r)].append(r)
    for component in near.values():
        if len(component) > 1:
            indices = sorted(i for r in component for i in members[reps[r]])
            group = _group("near", files, indices)
            group.distance = max(_hamming(files[indices[0]].phash, files[i].phash) for i in indices)
            groups.append(group)
    return sort_groups(groups)


def sort_groups(groups: list[DuplicateGroup]) -> list[DuplicateGroup]:
    """Most harmful first: leaks, then one image under two labels; exact copies before near
    ones before similar ones, then larger groups."""
    order = {"exact": 0, "near": 1, "similar": 2}
    return sorted(groups, key=lambda g: (not g.leak, not g.conflicting_labels, order[g.kind],
                                         -len(g.paths), g.paths[0]))


def _near_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int]]:
    """(i, j), i < j, of 64-bit hashes at most max_distance bits apart: every such pair, once.

    All pairs are n^2 / 2 XOR+popcounts: 50k hashes take seconds, 1M about two hours. Past
    _ALL_PAIRS_UP_TO hashes the search is multi-index hashing (Norouzi et al., CVPR 2012): cut
    the 64 bits into max_distance + 1 chunks; two hashes at most max_distance bits apart agree on
    at least one whole chunk (pigeonhole), so comparing only hashes that share a chunk value finds
    every pair, exactly, with ~1/146 of the comparisons for 6 bits (7 chunks of 9-10 bits): 1M
    hashes in ~2 minutes (benchmarks/README.md, "near_duplicates.py")."""
    chunks = max_distance + 1
    if len(hashes) <= _ALL_PAIRS_UP_TO or 2 ** (64 // chunks) < _MIN_BUCKETS_PER_CHUNK * chunks:
        i, j = _all_pairs(hashes, max_distance)
    else:
        i, j = _pairs_sharing_a_chunk(hashes, max_distance, chunks)
    return list(zip(i.tolist(), j.tolist(), strict=True))


def _all_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) index arrays, i < j, of every pair at most max_distance bits apart; in row
    blocks, so memory stays _BLOCK x n."""
    found_i, found_j = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start in range(0, len(hashes), _BLOCK):
        block = hashes[start:start + _BLOCK]
        distance = np.bitwise_count(block[:, None] ^ hashes[None, start:])  # (b, n - start)
        i, j = np.nonzero(distance <= max_distance)
        keep = j > i  # the upper triangle: each pair once, never an image with itself
        found_i.append(i[keep] + start)
        found_j.append(j[keep] + start)
    return np.concatenate(found_i), np.concatenate(found_j)


def _pairs_sharing_a_chunk(hashes: np.ndarray, max_distance: int,
                           chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """_all_pairs within every group of hashes equal on one of `chunks` bit ranges; a pair that
    shares several chunks is found several times and kept once."""
    n = len(hashes)
    bounds = np.linspace(0, 64, chunks + 1).astype(int)  # e.g. 0, 9, 18, ..., 64
    found = [np.zeros(0, np.int64)]
    for low, high in zip(bounds[:-1], bounds[1:], strict=True):
        key = (hashes >> np.uint64(low)) & np.uint64((1 << int(high - low)) - 1)
        order = np.argsort(key, kind="stable")  # equal keys keep ascending indices: i < j holds
        ordered = key[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        for first, end in zip(starts, np.r_[starts[1:], n], strict=True):
            if end - first > 1:
                members = order[first:end]
                i, j = _all_pairs(hashes[members], max_distance)
                found.append(members[i] * n + members[j])  # one int64 per pair, for unique
    pairs = np.unique(np.concatenate(found))
    return pairs // n, pairs % n


def _hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def find_root(parent: list[int], i: int) -> int:
    """Union-find: the root of i's tree."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving keeps the trees flat
        i = parent[i]
    return i


def _group(kind: str, files: list[FileInfo], indices: list[int]) -> DuplicateGroup:
    chosen = [files[i] for i in sorted(indices)]
    return DuplicateGroup(kind, [f.path for f in chosen], [f.split for f in chosen],
                          [f.label for f in chosen])


# ----------------------------------------------------------------------------- classes, sizes, modes


def class_imbalance(index: DatasetIndex) -> dict:
    """Images per class (all splits and per split), largest/smallest ratio, classes missing from
    a split."""
    per_split = {split: Counter(s.label for s in samples) for split, samples in index.splits.items()}
    total = Counter(s.label for s in index.all_samples)
    counts = {name: total.get(name, 0) for name in index.class_names}
    largest = max(counts, key=counts.get)
    smallest = min(counts, key=counts.get)
    ratio = counts[largest] / max(1, counts[smallest])
    return {
        "counts": counts,
        "per_split": {split: {name: c.get(name, 0) for name in index.class_names}
                      for split, c in per_split.items()},
        "largest": largest, "smallest": smallest, "ratio": ratio,
        "imbalanced": ratio > IMBALANCE_RATIO_INFO,
        "missing": {split: [name for name in index.class_names if c.get(name, 0) == 0]
                    for split, c in per_split.items() if any(c.get(n, 0) == 0 for n in index.class_names)},
    }


def size_outliers(files: list[FileInfo]) -> list[dict]:
    """Images whose area is far from the dataset's median (robust z-score of log area), most
    extreme first."""
    if len(files) < 3:
        return []
    log_area = [math.log(max(1, f.width * f.height)) for f in files]
    median = statistics.median(log_area)
    mad = statistics.median(abs(x - median) for x in log_area)
    scale = 1.4826 * mad  # MAD of a normal distribution -> its standard deviation
    median_area = math.exp(median)
    found = []
    for f, x in zip(files, log_area, strict=True):
        deviation = x - median
        z = deviation / scale if scale > 0 else math.copysign(math.inf, deviation) if deviation else 0.0
        if abs(z) >= SIZE_Z_THRESHOLD and abs(deviation) >= math.log(SIZE_MIN_AREA_RATIO):
            found.append({"path": f.path, "split": f.split, "label": f.label, "width": f.width,
                          "height": f.height, "area_ratio": round(math.exp(deviation), 4),
                          "direction": "large" if deviation > 0 else "small",
                          "median_size": round(math.sqrt(median_area), 1)})
    found.sort(key=lambda o: -abs(math.log(o["area_ratio"])))
    return found


def mode_kind(f: FileInfo) -> str:
    """A file's colour kind as training will see it: 'rgb', 'gray', 'alpha', 'cmyk', ..."""
    if f.mode in _ALPHA_MODES or f.transparency:
        return "alpha"
    if f.mode in _HIGH_DEPTH_MODES:
        return "high-depth"
    if f.mode in _GRAY_MODES:
        return "gray"
    return {"RGB": "rgb", "P": "palette", "CMYK": "cmyk", "YCbCr": "rgb"}.get(f.mode, f.mode.lower())


_MODE_MESSAGES = {
    "alpha": "has transparency, flattened onto white for the model",
    "high-depth": "more than 8 bits per pixel (mode {mode}), stretched to 8-bit grayscale",
    "gray": "grayscale (mode {mode}) in a dataset of mostly {dominant} images",
    "palette": "palette colours (mode P), expanded to RGB",
    "cmyk": "CMYK (print) colours, converted to RGB: colours may shift",
    "rgb": "colour (mode {mode}) in a dataset of mostly {dominant} images",
}


def odd_modes(files: list[FileInfo]) -> list[dict]:
    """Files whose colour kind differs from the dataset's most common one (grayscale among
    colour photos, CMYK, 16-bit, transparency, palette)."""
    if not files:
        return []
    kinds = [mode_kind(f) for f in files]
    dominant = Counter(kinds).most_common(1)[0][0]
    found = []
    for f, kind in zip(files, kinds, strict=True):
        if kind != dominant:
            template = _MODE_MESSAGES.get(kind, "unusual mode {mode}")
            found.append({"path": f.path, "split": f.split, "label": f.label, "mode": f.mode,
                          "kind": kind, "dominant": dominant,
                          "message": template.format(mode=f.mode, dominant=dominant)})
    return found
