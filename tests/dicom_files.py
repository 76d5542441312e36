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
