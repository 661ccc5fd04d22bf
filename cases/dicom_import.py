"""Read a dermoscopic or photographic DICOM file into 8-bit RGB pixels and the few facts we keep.

Pure: no database, no storage. ``read_dicom`` returns a ``DicomImage`` or raises
``cases.uploads.UploadRejected`` with a message for the clinician.

Decisions:
- A file is DICOM when it has the Part 10 layout: a 128-byte preamble, then ``b"DICM"``. Bare
  data sets without that header are not sniffed: too little in them is certain.
- Only Dermoscopic Photography Image Storage and VL Photographic Image Storage objects are accepted;
  anything else (CT, structured reports, a DICOMDIR...) is refused, naming what it is. The SOP class
  says what the image is, and that travels with it (``DicomImage.kind``): a VL Photographic image
  is a clinical photo, which the model never scores as dermoscopy, whatever the upload form said.
- Greyscale (MONOCHROME1/2) images are refused: the model judges colour, and grey copied into three
  channels would be scored as if it were a colour image.
- Of all the attributes only the body site, laterality and acquisition date are read. Nothing else
  leaves this module: the caller stores a PNG re-encoded from the pixels, so the patient's name and
  ID, the institution and every other attribute are dropped.
- The upload limits of ``cases.uploads`` apply before any pixel is decoded: Rows × Columns, and for
  JPEG frames the size their own header declares; a deflated data set is inflated only up to what
  an image at the pixel limit needs. Multi-frame objects are refused, as animated images are.
- The file meta group is walked element by element to find where it ends and its transfer syntax;
  its declared group length is never trusted. A file whose meta can't be walked, or a deflated one
  whose declared length disagrees with the walk, is refused before pydicom reads it.
"""
from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Iterable

import numpy as np
import pydicom
from django.conf import settings
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder, pixel_array
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    DermoscopicPhotographyImageStorage,
    JPEG2000TransferSyntaxes,
    JPEGTransferSyntaxes,
    MediaStorageDirectoryStorage,
    VLPhotographicImageStorage,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_16, EXPLICIT_VR_LENGTH_32

from cases.uploads import UploadRejected, check_dimensions, megabytes

# The accepted SOP classes and the image kind each one is (cases.models.LesionImage.Kind values,
# spelled out so this module needs no models)
DERMOSCOPIC, CLINICAL = "dermoscopic", "clinical"
SOP_CLASS_KINDS: dict[UID, str] = {DermoscopicPhotographyImageStorage: DERMOSCOPIC,
                                   VLPhotographicImageStorage: CLINICAL}
ACCEPTED_SOP_CLASSES = tuple(SOP_CLASS_KINDS)
# pydicom's decoders convert YBR to RGB; JPEG 2000's YBR_ICT/RCT come out as RGB too
PHOTOMETRIC = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
GREYSCALE = ("MONOCHROME1", "MONOCHROME2")
_PREAMBLE = 128
_MAGIC = b"DICM"

# The ISIC site groups (cases.models.Lesion.Site values), spelled out so this module needs no models.
HEAD_NECK, UPPER, LOWER, PALMS_SOLES = "head/neck", "upper extremity", "lower extremity", "palms/soles"
ANTERIOR, POSTERIOR, LATERAL, ORAL_GENITAL = "anterior torso", "posterior torso", "lateral torso", "oral/genital"
ISIC_SITES = (ANTERIOR, HEAD_NECK, LATERAL, LOWER, ORAL_GENITAL, PALMS_SOLES, POSTERIOR, UPPER)

# SNOMED CT codes (scheme SCT, or SRT in older files) of regions a skin image may name. Regions that
# don't say which side of the torso (trunk, torso, lower trunk, skin), or that straddle two groups
# (lip, hip, buttock, axilla, groin), are left out on purpose: "unknown" is better than a guess.
SNOMED_SITES: dict[str, str] = {
    "69536005": HEAD_NECK,  # head
    "45048000": HEAD_NECK,  # neck
    "774007": HEAD_NECK,  # head and neck
    "89545001": HEAD_NECK,  # face
    "73897004": HEAD_NECK,  # skin of face
    "41695006": HEAD_NECK,  # scalp
    "117590005": HEAD_NECK,  # ear
    "28347008": HEAD_NECK,  # external ear
    "45206002": HEAD_NECK,  # nose
    "60819002": HEAD_NECK,  # cheek
    "80243003": HEAD_NECK,  # eyelid
    "30291003": HEAD_NECK,  # chin
    "53120007": UPPER,  # upper limb
    "16982005": UPPER,  # shoulder
    "40983000": UPPER,  # upper arm
    "16953009": UPPER,  # elbow joint
    "14975008": UPPER,  # forearm
    "74670003": UPPER,  # wrist joint
    "85562004": UPPER,  # hand
    "7569003": UPPER,  # finger
    "61685007": LOWER,  # lower limb
    "68367000": LOWER,  # thigh
    "72696002": LOWER,  # knee
    "30021000": LOWER,  # lower leg
    "70258002": LOWER,  # ankle joint
    "56459004": LOWER,  # foot
    "2402003": LOWER,  # dorsum of foot
    "29707007": LOWER,  # toe
    "21547004": PALMS_SOLES,  # palm
    "57999000": PALMS_SOLES,  # sole of foot
    "816094009": ANTERIOR,  # chest
    "51185008": ANTERIOR,  # thorax (older code)
    "78904004": ANTERIOR,  # chest wall
    "818981001": ANTERIOR,  # abdomen
    "113345001": ANTERIOR,  # abdominal structure (older code)
    "76752008": ANTERIOR,  # breast
    "24142002": ANTERIOR,  # nipple
    "77568009": POSTERIOR,  # back
    "66643007": POSTERIOR,  # skin of back
    "37822005": POSTERIOR,  # lower back
    "52612000": POSTERIOR,  # lumbar region
    "58602004": LATERAL,  # flank
    "123851003": ORAL_GENITAL,  # mouth
    "74262004": ORAL_GENITAL,  # oral cavity
    "113277000": ORAL_GENITAL,  # oral mucosa
    "21974007": ORAL_GENITAL,  # tongue
    "18911002": ORAL_GENITAL,  # penis
    "20233005": ORAL_GENITAL,  # scrotum
    "45292006": ORAL_GENITAL,  # vulva
    "76784001": ORAL_GENITAL,  # vagina
    "38864007": ORAL_GENITAL,  # perineum
    "53505006": ORAL_GENITAL,  # anus
}
SNOMED_SCHEMES = ("SCT", "SRT", "SNM3", "99SDM")

# Words of a CodeMeaning or BodyPartExamined, tried in this order so that the more specific part
# wins ("palm of hand" is palms/soles, "back of hand" upper extremity, "back of neck" head/neck).
SITE_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (PALMS_SOLES, ("palm", "palms", "palmar", "sole", "soles", "plantar")),
    (ORAL_GENITAL, ("oral", "mouth", "tongue", "gingiva", "genital", "genitalia", "penis", "scrotum", "vulva",
                    "vagina", "labia", "perineum", "perianal", "anus", "anogenital")),
    (UPPER, ("upper limb", "upper extremity", "upperlimb", "upperextremity", "arm", "forearm", "hand", "hands",
             "finger", "fingers", "thumb", "shoulder", "elbow", "wrist")),
    (LOWER, ("lower limb", "lower extremity", "lowerlimb", "lowerextremity", "leg", "legs", "thigh", "knee", "shin",
             "calf", "ankle", "foot", "feet", "toe", "toes")),
    (HEAD_NECK, ("head", "neck", "headneck", "face", "facial", "scalp", "ear", "nose", "cheek", "forehead", "chin",
                 "eyelid", "temple")),
    (LATERAL, ("flank", "lateral torso", "lateral trunk", "side of trunk")),
    (POSTERIOR, ("back", "posterior torso", "posterior trunk", "lumbar", "interscapular", "scapular")),
    (ANTERIOR, ("anterior torso", "anterior trunk", "chest", "thorax", "thoracic", "abdomen", "abdominal", "breast",
                "umbilicus", "sternal")),
)

LEFT_CODES, RIGHT_CODES = {"7771000", "G-A101"}, {"24028007", "G-A100"}
DATE_KEYWORDS = ("AcquisitionDateTime", "AcquisitionDate", "ContentDate", "StudyDate")
SITE_SEQUENCES = (("AnatomicRegionSequence", "AnatomicRegionModifierSequence"),
                  ("PrimaryAnatomicStructureSequence", "PrimaryAnatomicStructureModifierSequence"))


@dataclass(frozen=True)
class DicomImage:
    """The pixels of one accepted DICOM image and what the file said about it."""

    image: Image.Image  # 8-bit RGB
    sop_class_uid: str
    body_site: str | None = None  # an ISIC site group
    laterality: str | None = None  # "left" or "right"
    acquired_on: date | None = None

    @property
    def kind(self) -> str:
        """What the SOP class says the image is: "dermoscopic" or "clinical" (a VL photograph)."""
        return SOP_CLASS_KINDS[UID(self.sop_class_uid)]

    @property
    def sop_class_name(self) -> str:
        return UID(self.sop_class_uid).name


def is_dicom(data: bytes) -> bool:
    """Whether the bytes have the DICOM Part 10 layout: a 128-byte preamble, then b"DICM"."""
    return data[_PREAMBLE:_PREAMBLE + len(_MAGIC)] == _MAGIC


def read_dicom(data: bytes) -> DicomImage:
    """The RGB pixels, SOP class (so the image kind), body site, laterality and date of a dermoscopic
    or photographic DICOM file."""
    _check_inflated_size(data)
    ds = _parse(data)
    try:
        sop_class = _check_sop_class(ds)
        image = _image(ds)
    except UploadRejected:
        raise
    except Exception as exc:  # damaged values fail deep inside pydicom, as a zoo of types
        raise UploadRejected(
            f"The DICOM file is damaged and its image cannot be read ({type(exc).__name__}).") from None
    return DicomImage(image=image, sop_class_uid=str(sop_class), body_site=_optional(body_site, ds),
                      laterality=_optional(laterality, ds), acquired_on=_optional(acquired_on, ds))


def _optional(read, ds: Dataset):
    """A descriptive attribute that can't be read is simply not known; it must not cost the image."""
    try:
        return read(ds)
    except Exception:
        return None


# --- reading the file ---------------------------------------------------------------------------

def _walk_meta(data: bytes) -> tuple[int, bytes | None, int | None]:
    """Where the file meta group (0002,eeee) really ends, its Transfer Syntax UID (raw) and the
    length its group length element (0002,0000) declares, found by walking its elements as pydicom
    will read them: Explicit VR Little Endian, up to the first tag of another group. A file whose
    meta cannot be walked is refused."""
    damaged = "The file starts like DICOM, but its header is damaged or incomplete"
    offset = _PREAMBLE + len(_MAGIC)
    transfer_syntax, declared = None, None
    while len(data) - offset >= 8:
        group, element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            break
        vr = data[offset + 4:offset + 6].decode("latin-1")
        if vr in EXPLICIT_VR_LENGTH_16:
            header, length = 8, struct.unpack_from("<H", data, offset + 6)[0]
        elif vr in EXPLICIT_VR_LENGTH_32 and len(data) - offset >= 12:
            header, length = 12, struct.unpack_from("<L", data, offset + 8)[0]
        else:  # an unknown VR (implicit VR meta, say) or an element cut short
            raise UploadRejected(f"{damaged} (its file meta elements cannot be read).")
        value_start = offset + header
        offset = value_start + length
        if length == 0xFFFFFFFF or offset > len(data):
            raise UploadRejected(f"{damaged} (a file meta element runs past its end).")
        if element == 0x0000:
            if vr != "UL" or length != 4:
                raise UploadRejected(f"{damaged} (its file meta group length is malformed).")
            declared = (struct.unpack_from("<L", data, value_start)[0], offset)
        elif element == 0x0010:
            transfer_syntax = data[value_start:offset]
    return offset, transfer_syntax, (None if declared is None else offset - declared[1] - declared[0])


def _check_inflated_size(data: bytes) -> None:
    """A deflated data set is a zip bomb waiting to happen: inflate it (bounded) before pydicom does."""
    end, transfer_syntax, length_error = _walk_meta(data)
    if transfer_syntax is None or DeflatedExplicitVRLittleEndian.encode() not in transfer_syntax:
        return  # a wrong group length elsewhere is harmless: pydicom reads the meta as walked here
    if length_error:
        # pydicom would start inflating where the declared length says, not where the walk ended
        raise UploadRejected("The file starts like DICOM, but its header is damaged or incomplete: its file meta "
                             f"group length is off by {length_error} bytes.")
    if data[end:end + 2] == b"\x00\x00":
        # pydicom would read command elements (0000,eeee) there and inflate what follows them
        raise UploadRejected("The DICOM file is deflated, but its compressed data is damaged.")
    # enough for 16-bit RGB at the pixel limit, plus a megabyte of attributes
    limit = settings.UPLOAD_MAX_PIXELS * 6 + 1_000_000
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflater.decompress(data[end:], limit)
    except zlib.error:
        raise UploadRejected("The DICOM file is deflated, but its compressed data is damaged.") from None
    if inflater.unconsumed_tail:
        raise UploadRejected(f"The DICOM file inflates to more than {megabytes(limit)}, more than an image within "
                             "the pixel limit needs. It may be a decompression bomb.")


def _parse(data: bytes) -> Dataset:
    """The data set, or a rejection saying the file is damaged."""
    try:
        with warnings.catch_warnings():
            # pydicom warns about every oddity of real-world files; the checks that follow decide
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:
        raise UploadRejected(f"The file starts like DICOM, but the rest cannot be read; it is damaged or truncated "
                             f"({type(exc).__name__}).") from None
    if "TransferSyntaxUID" not in ds.file_meta:
        raise UploadRejected("The file starts like DICOM, but its header is damaged or incomplete "
                             "(no transfer syntax).")
    return ds


def _article(name: str) -> str:
    """'a' or 'an' before a SOP class name ("an MR Image Storage object", "a CT Image Storage object")."""
    first = name.split(" ", 1)[0]
    # an acronym or a lone letter ("CT", "X-Ray") is read letter by letter
    spelt = first.isupper() or len(first) == 1 or not first[1:2].isalpha()
    vowel_sound = first[:1] in ("AEFHILMNORSX" if spelt else "AEIOUaeiou")
    return "an" if vowel_sound else "a"


def _check_sop_class(ds: Dataset) -> UID:
    """The SOP class, if it is one of the two accepted; otherwise a rejection naming what it is."""
    media_class = ds.file_meta.get("MediaStorageSOPClassUID")
    if media_class == MediaStorageDirectoryStorage or "DirectoryRecordSequence" in ds:
        raise UploadRejected("This is a DICOMDIR, the index of a DICOM disc or folder, not an image; "
                             "upload the image files it lists instead.")
    sop_class = ds.get("SOPClassUID")
    if not sop_class:
        raise UploadRejected("The DICOM file is damaged or incomplete: it does not say what kind of object "
                             "it holds (no SOP Class UID).")
    sop_class = UID(str(sop_class))
    if sop_class in ACCEPTED_SOP_CLASSES:
        return sop_class
    name = sop_class.name
    if name == str(sop_class):  # pydicom doesn't know it
        raise UploadRejected(f"This DICOM file holds an object of an unknown kind (SOP class {sop_class}), "
                             "not a dermoscopic or photographic image.")
    if name.endswith("SR Storage"):
        raise UploadRejected(f"This DICOM file is a structured report ({name}), not an image.")
    raise UploadRejected(f"This DICOM file is {_article(name)} {name} object, not a dermoscopic or photographic "
                         "image.")


# --- pixels --------------------------------------------------------------------------------------

def _image(ds: Dataset) -> Image.Image:
    """One still frame as 8-bit RGB, after the checks that need no decoding."""
    if "PixelData" not in ds:
        raise UploadRejected("The DICOM file has no pixel data: it holds no image, or it was cut short.")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise UploadRejected(f"This DICOM file holds {frames} frames (a multi-frame image or a video); "
                             "upload a single still image.")
    rows, columns = int(ds.Rows), int(ds.Columns)
    check_dimensions(columns, rows)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric in GREYSCALE:
        raise UploadRejected(f"The DICOM image is greyscale ({photometric}); the model judges a lesion's colours, so "
                             "it cannot assess a greyscale image. Export the image in colour (RGB).")
    if photometric not in PHOTOMETRIC:
        raise UploadRejected(f"The DICOM image uses the {photometric or 'unstated'} colour model, which is not "
                             "accepted; export it as RGB.")
    bits = int(ds.BitsAllocated)
    if bits > 16:
        raise UploadRejected(f"The DICOM image has {bits} bits per sample; only 8- and 16-bit images are accepted.")
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_compressed:
        _check_decodable(syntax)
        _check_frame_header(ds, syntax, rows, columns)
    else:
        _check_native_length(ds)
    return Image.fromarray(_rgb8(_decode(ds, syntax), ds), "RGB")


def _check_decodable(syntax: UID) -> None:
    """Refuse compressions the installed decoders can't handle, naming the compression."""
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise UploadRejected(f"The DICOM image is compressed with {syntax.name}, which this server cannot decode; "
                             "export it uncompressed or as baseline JPEG.")


def _check_frame_header(ds: Dataset, syntax: UID, rows: int, columns: int) -> None:
    """A JPEG frame declares its own size: hold it to the limits and to the DICOM header before decoding."""
    if syntax not in JPEGTransferSyntaxes + JPEG2000TransferSyntaxes:
        return  # RLE is decoded into Rows × Columns, already checked
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # check_dimensions decides
            width, height = Image.open(io.BytesIO(frame), formats=("JPEG", "JPEG2000")).size
    except Image.DecompressionBombError:
        raise UploadRejected("The compressed image inside the DICOM file declares far too many pixels; "
                             "it may be a decompression bomb.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return  # a header Pillow can't read: the decoder will report the damage
    check_dimensions(width, height)
    if (width, height) != (columns, rows):
        raise UploadRejected(f"The DICOM file is inconsistent: its header says {columns}×{rows} pixels, but the "
                             f"compressed image inside is {width}×{height}.")


def _check_native_length(ds: Dataset) -> None:
    """Uncompressed pixel data shorter than the header promises means a truncated file."""
    expected, actual = get_expected_length(ds), len(ds.PixelData)
    if actual < expected:
        raise UploadRejected(f"The DICOM file is truncated: it has {actual:,} of the {expected:,} bytes of pixel "
                             "data its header declares.")


def _decode(ds: Dataset, syntax: UID) -> np.ndarray:
    """Decoded pixels, YBR already converted to RGB (pydicom's default)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pixel_array(ds)
    except Exception as exc:
        what = f"compressed image ({syntax.name})" if syntax.is_compressed else "pixel data"
        raise UploadRejected(f"The DICOM file's {what} is damaged and cannot be decoded "
                             f"({type(exc).__name__}).") from None


def _rgb8(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """Any accepted sample depth and colour model -> an HxWx3 uint8 array."""
    bits_stored = int(ds.get("BitsStored") or ds.BitsAllocated)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    if pixels.dtype != np.uint8 or signed or bits_stored != 8:
        # 16-bit (or 12 bits in 16) scaled down by the range the file states, not by the container
        values = pixels.astype(np.float32)
        if signed:
            values += 2 ** (bits_stored - 1)  # shift to 0..max first
        values *= 255.0 / (2 ** bits_stored - 1)
        pixels = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if pixels.ndim != 3 or pixels.shape[2] != 3:  # the header said colour, the data is not
        raise UploadRejected(f"The DICOM file is inconsistent: its header states a colour image, but its pixel "
                             f"data has {pixels.shape[2] if pixels.ndim == 3 else 1} sample(s) per pixel.")
    return np.ascontiguousarray(pixels)


# --- what the file says about the image ----------------------------------------------------------

def _words(text: str) -> str:
    """Lower-case words separated by single spaces, padded, for whole-word matching."""
    return f" {' '.join(re.findall(r'[a-z]+', text.lower()))} "


def site_from_text(text: str | None) -> str | None:
    """The ISIC site group a free-text region names ("Structure of left forearm", "CHEST"), or None."""
    if not text:
        return None
    # "Back structure, excluding neck": what is excluded must not decide the site
    text = re.split(r"\bexcluding\b", str(text), maxsplit=1, flags=re.IGNORECASE)[0]
    words = _words(text)
    for site in ISIC_SITES:
        if words == _words(site):
            return site
    for site, terms in SITE_WORDS:
        if any(f" {term} " in words for term in terms):
            return site
    return None


def _coded_items(ds: Dataset) -> Iterable[tuple[Dataset, str]]:
    """Each anatomic region/structure item with the keyword of its modifier sequence."""
    for sequence, modifiers in SITE_SEQUENCES:
        for item in ds.get(sequence) or ():
            yield item, modifiers


def _site_of_code(item: Dataset) -> str | None:
    code = str(item.get("CodeValue", "")).strip()
    scheme = str(item.get("CodingSchemeDesignator", "")).strip().upper()
    if scheme in SNOMED_SCHEMES and code in SNOMED_SITES:
        return SNOMED_SITES[code]
    return site_from_text(item.get("CodeMeaning"))


def body_site(ds: Dataset) -> str | None:
    """The ISIC site group from the coded anatomic region (code first, then its meaning), else from
    Body Part Examined; None when the file says nothing the table maps."""
    for item, _ in _coded_items(ds):
        site = _site_of_code(item)
        if site:
            return site
    return site_from_text(ds.get("BodyPartExamined"))


def _side_of_words(text: str) -> str | None:
    words = _words(text)
    left, right = " left " in words, " right " in words
    return "left" if left and not right else "right" if right and not left else None


def laterality(ds: Dataset) -> str | None:
    """"left"/"right" from Image Laterality or Laterality, else the region's modifier codes or words."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword) or "").strip().upper()
        if value in ("L", "R"):
            return "left" if value == "L" else "right"
    for item, modifiers in _coded_items(ds):
        for modifier in item.get(modifiers) or ():
            code = str(modifier.get("CodeValue", "")).strip()
            if code in LEFT_CODES or code in RIGHT_CODES:
                return "left" if code in LEFT_CODES else "right"
        side = _side_of_words(str(item.get("CodeMeaning", "")))
        if side:
            return side
    return None


def _date(value) -> date | None:
    """A DA or DT value as a date; None when absent, malformed or implausible (before 1900, or future)."""
    text = str(value or "").strip().replace(".", "")  # "YYYY.MM.DD" is the old ACR-NEMA form
    try:
        day = datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None
    # a day's grace: the camera's clock may be in a time zone ahead of the server's
    return day if date(1900, 1, 1) <= day <= date.today() + timedelta(days=1) else None


def acquired_on(ds: Dataset) -> date | None:
    """The date the image was taken: Acquisition DateTime, Acquisition Date, Content Date or Study Date."""
    for keyword in DATE_KEYWORDS:
        day = _date(ds.get(keyword))
        if day:
            return day
    return None
