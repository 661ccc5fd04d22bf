"""The deflate-bomb check finds the end of the file meta group by walking it, not by believing its
declared group length (0002,0000): a file that lies about that length, or has none and a long meta
group, must still be inflated (bounded) before pydicom ever reads it."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from cases import dicom_import
from cases.dicom_import import read_dicom
from cases.uploads import UploadRejected
from tests.support.dicomgen import dicom_file, rgb_pixels

META = 132  # 128-byte preamble + b"DICM"


@pytest.fixture
def no_pydicom(monkeypatch):
    """pydicom's reader must not be reached: it would inflate without limit. (read_dicom turns any
    exception of pydicom's into a rejection, so the calls are counted rather than raised.)"""
    calls = []
    monkeypatch.setattr(dicom_import.pydicom, "dcmread", lambda *args, **kwargs: calls.append(args))
    yield
    assert not calls, "pydicom.dcmread was called"


@pytest.fixture
def bomb(settings) -> bytes:
    """A deflated file that inflates far past what an image at the pixel limit needs."""
    settings.UPLOAD_MAX_PIXELS = 10_000  # inflating may then reach 1.06 MB
    data = dicom_file(np.zeros((1200, 1200), dtype=np.uint8), transfer_syntax=DeflatedExplicitVRLittleEndian)
    assert len(data) < 20_000
    return data


def element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"UN", b"UT", b"SQ"):
        return struct.pack("<HH2s2xL", group, elem, vr, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def split_meta(data: bytes) -> tuple[bytes, bytes]:
    """The meta elements after the group length, and the (deflated) data set after them."""
    assert data[META:META + 8] == b"\x02\x00\x00\x00UL\x04\x00"
    end = META + 12 + int.from_bytes(data[META + 8:META + 12], "little")
    return data[META + 12:end], data[end:]


def without_group_length(data: bytes, padding: int = 0) -> bytes:
    """The file with no (0002,0000), its version element (0002,0001) padded by ``padding`` bytes, so
    the transfer syntax after it lies that far further in."""
    elements, body = split_meta(data)
    version = element(0x0002, 0x0001, b"OB", b"\x00\x01")
    assert elements.startswith(version)
    padded = element(0x0002, 0x0001, b"OB", b"\x00\x01" + b"\x00" * padding)
    return data[:META] + padded + elements[len(version):] + body


def test_a_deflated_file_declaring_a_zero_group_length_is_refused_unread(bomb, no_pydicom):
    lying = bomb[:META + 8] + struct.pack("<L", 0) + bomb[META + 12:]
    with pytest.raises(UploadRejected) as info:
        read_dicom(lying)
    assert "its file meta group length is off by" in str(info.value)


def test_a_deflated_file_with_no_group_length_and_a_long_meta_is_refused_as_a_bomb(bomb, no_pydicom):
    file = without_group_length(bomb, padding=5000)
    assert file.index(DeflatedExplicitVRLittleEndian.encode()) > 4096
    with pytest.raises(UploadRejected) as info:
        read_dicom(file)
    assert "decompression bomb" in str(info.value)


def test_meta_that_cannot_be_walked_is_refused_unread(no_pydicom):
    data = dicom_file(transfer_syntax=DeflatedExplicitVRLittleEndian)
    elements, body = split_meta(data)
    implicit = b"".join(  # the same meta, written with implicit VR (no VR, 4-byte lengths)
        struct.pack("<HHL", 0x0002, elem, len(value)) + value
        for elem, value in [(0x0001, b"\x00\x01"), (0x0010, DeflatedExplicitVRLittleEndian.encode() + b"\x00")])
    with pytest.raises(UploadRejected) as info:
        read_dicom(data[:META] + implicit + body)
    assert "header is damaged or incomplete (its file meta elements cannot be read)" in str(info.value)
    past_end = data[:META] + struct.pack("<HH2s2xL", 0x0002, 0x0001, b"OB", 10**9) + body
    with pytest.raises(UploadRejected) as info:
        read_dicom(past_end)
    assert "runs past its end" in str(info.value)


def test_command_elements_between_meta_and_deflated_data_are_refused_unread(no_pydicom):
    data = dicom_file(transfer_syntax=DeflatedExplicitVRLittleEndian)
    elements, body = split_meta(data)
    meta = element(0x0002, 0x0000, b"UL", struct.pack("<L", len(elements))) + elements
    command = struct.pack("<HHL", 0x0000, 0x0100, 2) + b"\x01\x00"  # implicit VR, as pydicom reads it
    with pytest.raises(UploadRejected) as info:
        read_dicom(data[:META] + meta + command + body)
    assert "compressed data is damaged" in str(info.value)


def test_an_honest_deflated_file_without_a_group_length_is_still_read():
    pixels = rgb_pixels((64, 64))
    data = dicom_file(pixels, transfer_syntax=DeflatedExplicitVRLittleEndian)
    image = read_dicom(without_group_length(data))
    assert np.array_equal(np.asarray(image.image), pixels)


def test_a_plain_file_with_a_wrong_group_length_is_still_read():
    # harmless where nothing is inflated: pydicom reads the meta as the walk does (it logs the error)
    pixels = rgb_pixels((64, 64))
    data = dicom_file(pixels)
    declared = int.from_bytes(data[META + 8:META + 12], "little")
    wrong = data[:META + 8] + struct.pack("<L", declared + 2) + data[META + 12:]
    assert np.array_equal(np.asarray(read_dicom(wrong).image), pixels)
