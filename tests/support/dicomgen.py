"""Build DICOM files in memory with pydicom (no binary fixtures in the repository)."""
from __future__ import annotations

import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import DermoscopicPhotographyImageStorage, ExplicitVRLittleEndian, UID, generate_uid

# identifying attributes every generated file carries, so tests can check none of them survive
PATIENT_NAME = "Doe^Jane^Secret"
PATIENT_ID = "MRN-98765-XYZ"
INSTITUTION = "Riverside Skin Institute"


def code(value: str, meaning: str, scheme: str = "SCT") -> Dataset:
    """One coded-concept item (Code Value, Coding Scheme Designator, Code Meaning)."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def region(value: str, meaning: str, *modifiers: Dataset, scheme: str = "SCT") -> Sequence:
    """An Anatomic Region Sequence of one item, with optional modifier codes (laterality)."""
    item = code(value, meaning, scheme)
    if modifiers:
        item.AnatomicRegionModifierSequence = Sequence(list(modifiers))
    return Sequence([item])


def rgb_pixels(size=(96, 64), seed: int = 0) -> np.ndarray:
    """Deterministic smooth-ish RGB pixels (rows × columns × 3, uint8)."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(seed).integers(0, 40, size=(height, width, 3))
    base = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], axis=2)
    return np.clip(base * 0.8 + noise, 0, 255).astype(np.uint8)


def dataset(pixels: np.ndarray | None = None, *, sop_class: str = DermoscopicPhotographyImageStorage,
            photometric: str | None = None, transfer_syntax: str = ExplicitVRLittleEndian,
            pixel_data: bytes | None = None, bits_stored: int | None = None, frames: int = 1,
            identifying: bool = True, **attributes) -> Dataset:
    """A data set with file meta; pixels (rows × columns [× 3]) set the image module attributes.

    ``pixel_data`` replaces the encoded pixels (encapsulated or damaged data); extra keyword
    arguments become attributes (``AcquisitionDateTime="20240305101500"``)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "XC"
    if identifying:
        ds.PatientName, ds.PatientID, ds.InstitutionName = PATIENT_NAME, PATIENT_ID, INSTITUTION
        ds.PatientBirthDate = "19700101"
    if pixels is not None:
        color = pixels.ndim == 3
        ds.Rows, ds.Columns = pixels.shape[:2]
        ds.SamplesPerPixel = 3 if color else 1
        ds.PhotometricInterpretation = photometric or ("RGB" if color else "MONOCHROME2")
        if color:
            ds.PlanarConfiguration = 0
        ds.BitsAllocated = pixels.dtype.itemsize * 8
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 0
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.PixelData = pixel_data if pixel_data is not None else pixels.tobytes() * frames
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def encode(ds: Dataset) -> bytes:
    """The data set as a DICOM Part 10 file: 128-byte preamble, "DICM", file meta, data set."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dicom_file(pixels: np.ndarray | None = None, **kwargs) -> bytes:
    """``encode(dataset(...))``: a complete file in one call."""
    return encode(dataset(rgb_pixels() if pixels is None else pixels, **kwargs))
