"""The DICOM test fixture ``tests/data/ct_hu_128.dcm``, made from the project's own data.

A 128² CT slice in Hounsfield units: the shipped held-out slice ``indist_samples/CT/cranium/048.npy``
(64², values in the [0, 1] window of ``utils.data.hu_to_unit``) up-sampled 2× by pixel repetition
(so area averaging back to 64² gives the original up to the HU rounding), converted to HU
(``HU = 3000·x − 1000``), rounded, and stored as unsigned 16-bit pixels with ``RescaleIntercept =
-1024``, ``RescaleSlope = 1`` (the usual CT encoding).  Fixed UIDs and no dates: the file is the
same bytes on every machine.

    python -m tests.dicom_fixture          # (re)writes tests/data/ct_hu_128.dcm
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "indist_samples" / "CT" / "cranium" / "048.npy"
FIXTURE = ROOT / "tests" / "data" / "ct_hu_128.dcm"
INTERCEPT = -1024.0


def source_hu() -> np.ndarray:
    """The fixture's HU image ``[128, 128]`` (float64, before the 16-bit rounding)."""
    unit = np.load(SOURCE).astype(np.float64)
    return np.kron(unit, np.ones((2, 2))) * 3000.0 - 1000.0


def write_ct_dicom(path, hu: np.ndarray, instance: int = 1, uid_suffix: str = "1") -> Path:
    """Write the HU image ``hu`` ``[H, W]`` as a CT DICOM file (16-bit, RescaleIntercept -1024)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    stored = np.round(np.asarray(hu, np.float64) - INTERCEPT)
    if stored.min() < 0 or stored.max() > 65535:
        raise ValueError("HU values outside what 16-bit pixels with intercept -1024 can hold")
    uid = f"1.2.826.0.1.3680043.10.1000.{uid_suffix}"      # fixed (not generated): reproducible bytes
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid + ".1", uid + ".2"
    ds.Modality = "CT"
    ds.PatientID = "udig-test"
    ds.InstanceNumber = int(instance)
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept, ds.RescaleSlope = INTERCEPT, 1.0
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return Path(path)


if __name__ == "__main__":
    print(write_ct_dicom(FIXTURE, source_hu()))
