"""DICOM files written by the tests themselves (pydicom; the 'medical' extra): a minimal
single-frame CT file with a made-up patient, so tests can check that no message names it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

PATIENT = "Doe^Jane"
PATIENT_ID = "MRN-4711"


def dicom_dataset(pixels: np.ndarray, **tags) -> FileDataset:
    """A minimal single-frame DICOM file (CT image storage) holding `pixels` (rows x cols)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientName, ds.PatientID = PATIENT, PATIENT_ID
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def write_dicom(ds: FileDataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(rows: int = 24, cols: int = 32) -> np.ndarray:
    """12-bit unsigned values 0..4095 in a ramp, so every window position shows."""
    return np.linspace(0, 4095, rows * cols).round().astype(np.uint16).reshape(rows, cols)


# Two classes of 16-bit CT-like scans: "bright" (+300 HU) and "dark" (-300 HU), with the same
# texture, stored through RescaleSlope 2 / Intercept -1024 and without a window of their own, so
# each file's min..max stretch makes both look alike and only a window (WINDOW) tells them apart.
WINDOW = (0.0, 1200.0)  # center, width in HU
CLASS_HU = {"bright": 300.0, "dark": -300.0}


def ct_scan(hu_level: float, seed: int, *, monochrome1: bool = False, size: int = 32):
    """A DICOM dataset whose modality values are `hu_level` +- 150 HU of seeded texture (a ramp
    plus noise). MONOCHROME1 files store the negated values, so they look the same once shown
    (0 is white there) through a window centred on 0."""
    rng = np.random.default_rng(seed)
    texture = np.linspace(-150, 150, size)[None, :] + rng.normal(0, 20, (size, size))
    hu = np.clip(hu_level + texture, -1000, 1000)
    if monochrome1:
        hu = -hu
    stored = np.rint((hu + 1024) / 2).astype(np.uint16)  # HU = 2 * stored - 1024
    return dicom_dataset(stored, RescaleSlope=2, RescaleIntercept=-1024,
                         PhotometricInterpretation="MONOCHROME1" if monochrome1 else "MONOCHROME2")


def write_ct_classes(root: Path, per_class: int, *, seed: int = 0) -> list[tuple[Path, str, str]]:
    """root/<bright|dark>/... DICOM files: every 3rd MONOCHROME1, every 4th named IM0007 (no
    extension), the rest NAME.dcm; patient k of 6 holds image k mod 6 of each class. Returns
    (path, label, patient) rows."""
    rows = []
    for c, (label, level) in enumerate(sorted(CLASS_HU.items())):
        for i in range(per_class):
            name = f"IM{i:04d}" if i % 4 == 3 else f"{label}_{i:02d}.dcm"
            ds = ct_scan(level, seed + 1000 * c + i, monochrome1=i % 3 == 2)
            rows.append((write_dicom(ds, root / label / name), label, f"P{i % 6}"))
    return rows
