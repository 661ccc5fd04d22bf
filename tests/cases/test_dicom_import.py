"""DICOM import: dermoscopic and photographic DICOM files become ordinary uploads (a metadata-free
PNG of the pixels, plus the body site and date the file states); every other kind of DICOM, and
every damaged one, gets its own message and leaves nothing behind."""
from __future__ import annotations

import io
import struct
from datetime import date

import numpy as np
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.sequence import Sequence
from pydicom.uid import (
    ComprehensiveSRStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    DermoscopicPhotographyImageStorage,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    MediaStorageDirectoryStorage,
    SecondaryCaptureImageStorage,
    VLPhotographicImageStorage,
)

from audit.models import AuditEvent
from cases import services
from cases.dicom_import import body_site, is_dicom, read_dicom, site_from_text
from cases.forms import UPLOAD_ACCEPT, UploadForm
from cases.models import Lesion, LesionImage, Prediction
from cases.uploads import UploadRejected, normalise_upload
from tests.support import dicomgen
from tests.support.case_helpers import stored_files
from tests.support.dicomgen import code, dataset, dicom_file, encode, region, rgb_pixels
from tests.support.imagegen import jpeg, upload

pytestmark = pytest.mark.django_db

FOREARM_LEFT = region("14975008", "Forearm", code("7771000", "Left"))


def dcm(name: str, data: bytes):
    return upload(name, data, "application/dicom")


def rejected(data: bytes) -> str:
    with pytest.raises(UploadRejected) as info:
        normalise_upload(dcm("image.dcm", data))
    return str(info.value)


def png_chunks(data: bytes) -> list[bytes]:
    """The chunk types of a PNG, in order."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        chunks.append(kind)
        offset += 12 + length
    return chunks


def decoded(image) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image.content)).convert("RGB"))


# --- reading -------------------------------------------------------------------------------------

def test_dermoscopic_rgb_keeps_pixels_site_and_date_and_drops_everything_identifying():
    pixels = rgb_pixels((96, 64), seed=1)
    data = dicom_file(pixels, AnatomicRegionSequence=FOREARM_LEFT, AcquisitionDateTime="20240305101500.000000",
                      StudyDate="20200101")
    assert is_dicom(data) and dicomgen.PATIENT_NAME.encode() in data  # the identifiers really are in the file
    image = normalise_upload(dcm("derm.dcm", data))
    assert (image.width, image.height, image.original_format, image.original_name) == (96, 64, "DICOM", "derm.dcm")
    assert (image.body_site, image.laterality, image.acquired_on) == ("upper extremity", "left", date(2024, 3, 5))
    assert np.array_equal(decoded(image), pixels)
    assert png_chunks(image.content) == [b"IHDR", b"IDAT", b"IEND"]  # no text, time or profile chunks
    for secret in (dicomgen.PATIENT_NAME, "Doe", dicomgen.PATIENT_ID, dicomgen.INSTITUTION, "19700101", "DICM"):
        assert secret.encode() not in image.content


def test_vl_photographic_is_read_as_a_clinical_photo():
    pixels = rgb_pixels((64, 48), seed=4)
    image = read_dicom(dicom_file(pixels, sop_class=VLPhotographicImageStorage, BodyPartExamined="BACK"))
    assert np.array_equal(np.asarray(image.image), pixels)
    assert image.sop_class_uid == VLPhotographicImageStorage and image.body_site == "posterior torso"
    assert image.kind == "clinical" and image.sop_class_name == "VL Photographic Image Storage"
    normalised = normalise_upload(dcm("photo.dcm", dicom_file(pixels, sop_class=VLPhotographicImageStorage)))
    assert (normalised.kind, normalised.source_sop_class) == ("clinical", "VL Photographic Image Storage")


def test_dermoscopic_dicom_states_its_kind_and_other_formats_do_not():
    assert read_dicom(dicom_file()).kind == "dermoscopic"
    assert normalise_upload(dcm("d.dcm", dicom_file())).kind == "dermoscopic"
    image = normalise_upload(upload("photo.jpg", jpeg()))
    assert image.kind is None and image.source_sop_class == ""


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("sop_class", [VLPhotographicImageStorage, DermoscopicPhotographyImageStorage])
def test_greyscale_dicom_is_refused_rather_than_scored_as_colour(photometric, sop_class):
    grey = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1))  # 48 × 64
    message = rejected(dicom_file(grey, sop_class=sop_class, photometric=photometric))
    assert message == (f"The DICOM image is greyscale ({photometric}); the model judges a lesion's colours, so it "
                       "cannot assess a greyscale image. Export the image in colour (RGB).")


def test_a_colour_header_over_single_sample_pixels_is_refused():
    grey = np.full((40, 40), 30, dtype=np.uint8)
    assert "its pixel data has 1 sample(s) per pixel" in rejected(dicom_file(grey, photometric="RGB"))


def test_ybr_full_is_converted_to_rgb():
    pixels = rgb_pixels((64, 48), seed=2)
    ybr = convert_color_space(pixels, "RGB", "YBR_FULL")
    arr = np.asarray(read_dicom(dicom_file(ybr, photometric="YBR_FULL")).image).astype(int)
    assert np.abs(arr - pixels.astype(int)).max() <= 2


def test_16_bit_images_are_scaled_by_their_stated_depth():
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
    arr = np.asarray(read_dicom(dicom_file(np.repeat(ramp[..., None], 3, axis=2))).image)
    assert arr[63, 63, 0] == round(int(ramp[63, 63]) * 255 / 65535) and arr[0, 0, 0] == 0
    twelve_bit = np.full((40, 40, 3), 4095, dtype=np.uint16)
    twelve_bit[:20] = 2048
    arr = np.asarray(read_dicom(dicom_file(twelve_bit, bits_stored=12)).image)
    assert (arr[30] == 255).all() and (arr[5] == 128).all()  # 12 bits of 16: full scale is 4095, not 65535


def test_jpeg_baseline_pixel_data_is_decoded():
    pixels = rgb_pixels((96, 64), seed=3)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    ds = dataset(pixels, photometric="YBR_FULL_422", transfer_syntax=JPEGBaseline8Bit,
                 pixel_data=encapsulate([buffer.getvalue()]))
    arr = np.asarray(read_dicom(encode(ds)).image).astype(int)
    reference = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")).astype(int)
    assert np.abs(arr - reference).max() <= 1  # what Pillow itself decodes: no second colour conversion


def test_jpeg_frame_larger_than_the_header_says_is_refused_before_decoding():
    buffer = io.BytesIO()
    Image.fromarray(rgb_pixels((200, 150))).save(buffer, "JPEG")
    ds = dataset(rgb_pixels((96, 64)), photometric="YBR_FULL_422", transfer_syntax=JPEGBaseline8Bit,
                 pixel_data=encapsulate([buffer.getvalue()]))
    assert "header says 96×64 pixels, but the compressed image inside is 200×150" in rejected(encode(ds))


def test_deflated_file_is_read_and_a_deflate_bomb_is_refused(settings):
    pixels = rgb_pixels((64, 64))
    image = read_dicom(dicom_file(pixels, transfer_syntax=DeflatedExplicitVRLittleEndian))
    assert np.array_equal(np.asarray(image.image), pixels)
    settings.UPLOAD_MAX_PIXELS = 10_000  # inflating may then reach 1.06 MB
    bomb = dicom_file(np.zeros((1200, 1200), dtype=np.uint8), transfer_syntax=DeflatedExplicitVRLittleEndian)
    assert len(bomb) < 20_000
    assert "decompression bomb" in rejected(bomb)


def test_the_upload_pixel_limits_apply_before_decoding(settings):
    settings.UPLOAD_MAX_PIXELS = 1_000_000
    # the header declares 2000 × 2000; the pixel data is never looked at
    ds = dataset(np.zeros((2000, 2000), dtype=np.uint8), pixel_data=b"\0\0")
    assert "2000×2000 pixels (4.0 MP); the limit is 1.0 MP" in rejected(encode(ds))
    assert "at least 32 pixels" in rejected(dicom_file(rgb_pixels((20, 20))))


REJECTIONS = [
    ("multi-frame", lambda: dicom_file(rgb_pixels(), frames=3), "holds 3 frames"),
    ("CT", lambda: dicom_file(np.zeros((64, 64), dtype=np.uint16), sop_class=CTImageStorage),
     "This DICOM file is a CT Image Storage object, not a dermoscopic or photographic image."),
    ("secondary capture", lambda: dicom_file(sop_class=SecondaryCaptureImageStorage),
     "is a Secondary Capture Image Storage object"),
    ("unknown class", lambda: dicom_file(sop_class="1.2.3.4.5"), "unknown kind (SOP class 1.2.3.4.5)"),
    ("structured report", lambda: encode(dataset(sop_class=ComprehensiveSRStorage)),
     "structured report (Comprehensive SR Storage), not an image"),
    ("DICOMDIR", lambda: encode(dataset(sop_class=MediaStorageDirectoryStorage, DirectoryRecordSequence=Sequence())),
     "DICOMDIR"),
    ("no pixel data", lambda: encode(dataset(AnatomicRegionSequence=FOREARM_LEFT)), "has no pixel data"),
    ("truncated pixels", lambda: dicom_file()[:-5000], "truncated"),
    ("truncated header", lambda: dicom_file()[:200], "header is damaged or incomplete"),
    ("junk after DICM", lambda: dicom_file()[:132] + np.random.default_rng(0).bytes(4000),
     "header is damaged or incomplete"),
    ("junk data set", lambda: _junk_after_meta(), "damaged or incomplete"),
    ("undecodable compression", lambda: encode(dataset(rgb_pixels(), transfer_syntax=JPEGLosslessSV1,
                                                       pixel_data=encapsulate([b"\xff\xd8" + b"\0" * 64]))),
     "compressed with JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1]), "
     "which this server cannot decode"),
    ("corrupt JPEG", lambda: encode(dataset(rgb_pixels(), photometric="YBR_FULL_422", transfer_syntax=JPEGBaseline8Bit,
                                            pixel_data=encapsulate([b"\xff\xd8\xff\xe0" + b"\x13" * 500]))),
     "damaged"),
    ("palette colour", lambda: dicom_file(np.zeros((64, 64), dtype=np.uint8), photometric="PALETTE COLOR"),
     "PALETTE COLOR colour model"),
]


def _junk_after_meta() -> bytes:
    """A valid header followed by random bytes where the data set should be."""
    data = dicom_file()
    meta_end = 144 + int.from_bytes(data[140:144], "little")
    return data[:meta_end] + np.random.default_rng(1).bytes(4000)


@pytest.mark.parametrize("make,expected", [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS])
def test_bad_or_non_image_dicom_gets_a_specific_message(make, expected):
    assert expected in rejected(make())


# --- what the file says --------------------------------------------------------------------------

@pytest.mark.parametrize("text,site", [
    ("Structure of left forearm", "upper extremity"),
    ("Palm of hand", "palms/soles"),
    ("Structure of sole of foot", "palms/soles"),
    ("Back of hand", "upper extremity"),
    ("Back structure, excluding neck", "posterior torso"),
    ("Back of neck", "head/neck"),
    ("Skin of face", "head/neck"),
    ("CHEST", "anterior torso"),
    ("ABDOMEN", "anterior torso"),
    ("HEADNECK", "head/neck"),
    ("LOWER LIMB", "lower extremity"),
    ("Flank", "lateral torso"),
    ("Vulva", "oral/genital"),
    ("oral cavity", "oral/genital"),
    ("anterior torso", "anterior torso"),
    ("Head/Neck", "head/neck"),
    ("Trunk", None),  # doesn't say front or back
    ("Skin", None),
    ("", None),
])
def test_region_words_map_to_isic_site_groups(text, site):
    assert site_from_text(text) == site


def test_snomed_code_decides_before_the_meaning_and_body_part():
    ds = dataset(rgb_pixels(), AnatomicRegionSequence=region("21547004", "something local"), BodyPartExamined="CHEST")
    assert body_site(ds) == "palms/soles"
    ds = dataset(rgb_pixels(), AnatomicRegionSequence=region("99999999", "Thigh"), BodyPartExamined="CHEST")
    assert body_site(ds) == "lower extremity"
    assert body_site(dataset(rgb_pixels(), BodyPartExamined="HAND")) == "upper extremity"
    assert body_site(dataset(rgb_pixels(), BodyPartExamined="SKIN")) is None
    assert body_site(dataset(rgb_pixels())) is None


@pytest.mark.parametrize("attributes,expected", [
    ({"ImageLaterality": "R", "AnatomicRegionSequence": FOREARM_LEFT}, "right"),
    ({"Laterality": "L"}, "left"),
    ({"AnatomicRegionSequence": region("56459004", "Foot", code("24028007", "Right"))}, "right"),
    ({"AnatomicRegionSequence": region("239919000", "Entire left foot")}, "left"),
    ({"ImageLaterality": "U"}, None),
    ({}, None),
])
def test_laterality(attributes, expected):
    assert read_dicom(dicom_file(**attributes)).laterality == expected


@pytest.mark.parametrize("attributes,expected", [
    ({"AcquisitionDateTime": "20230102", "AcquisitionDate": "20220101"}, date(2023, 1, 2)),
    ({"AcquisitionDate": "20220101", "ContentDate": "20210101", "StudyDate": "20200101"}, date(2022, 1, 1)),
    ({"ContentDate": "20210101", "StudyDate": "20200101"}, date(2021, 1, 1)),
    ({"StudyDate": "2020.01.01"}, date(2020, 1, 1)),
    ({"AcquisitionDate": "20219999", "StudyDate": "20200101"}, date(2020, 1, 1)),  # malformed: next one
    ({"AcquisitionDate": "29990101"}, None),  # in the future: not trusted
    ({}, None),
])
@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")  # pydicom, on writing the malformed dates
def test_acquisition_date_sources_in_order(attributes, expected):
    assert read_dicom(dicom_file(**attributes)).acquired_on == expected


# --- the upload service --------------------------------------------------------------------------


def unknown_site_lesion(world) -> Lesion:
    return Lesion.objects.create(case=world.case_a, anatomic_site="unknown")


def test_service_sets_an_unknown_lesion_site_from_the_file_before_scoring(world, media_root, monkeypatch,
                                                                          django_capture_on_commit_callbacks):
    sites_when_sent: list[str] = []
    monkeypatch.setattr("cases.scoring.dispatch_prediction", lambda pk, **kwargs: sites_when_sent.append(
        Prediction.objects.get(pk=pk).image.lesion.anatomic_site) or True)
    lesion = unknown_site_lesion(world)
    data = dicom_file(AnatomicRegionSequence=FOREARM_LEFT, AcquisitionDate="20240305")
    with django_capture_on_commit_callbacks(execute=True):
        outcome = services.upload_images(user=world.clin_a, lesion=lesion, files=[dcm("arm.dcm", data)])
    image = outcome.accepted[0]
    lesion.refresh_from_db()
    assert lesion.anatomic_site == "upper extremity"
    assert (image.source_body_site, image.acquired_on, image.original_format) == ("upper extremity", date(2024, 3, 5),
                                                                                "DICOM")
    update = AuditEvent.objects.get(action="update", object_type="lesion", object_id=str(lesion.pk))
    assert update.old_values == {"anatomic_site": "unknown"}
    assert update.new_values == {"anatomic_site": "upper extremity", "reason": "from the DICOM file"}
    upload_event = AuditEvent.objects.get(action="upload", object_id=str(image.pk))
    assert upload_event.new_values["source_body_site"] == "upper extremity"
    assert upload_event.new_values["acquired_on"] == "2024-03-05"
    assert upload_event.new_values["source_laterality"] == "left"
    assert sites_when_sent == ["upper extremity"]  # in place when the prediction was sent for scoring
    with image.file.open("rb") as handle:
        stored = handle.read()
    assert dicomgen.PATIENT_NAME.encode() not in stored and dicomgen.PATIENT_ID.encode() not in stored
    assert stored_files(media_root) == [image.file.name]


def test_service_keeps_a_lesion_site_the_clinician_chose(world, dispatched):
    lesion = world.lesion_a  # posterior torso
    data = dicom_file(AnatomicRegionSequence=FOREARM_LEFT)
    image = services.upload_images(user=world.clin_a, lesion=lesion, files=[dcm("arm.dcm", data)]).accepted[0]
    lesion.refresh_from_db()
    assert lesion.anatomic_site == "posterior torso" and image.source_body_site == "upper extremity"
    assert not AuditEvent.objects.filter(action="update", object_type="lesion").exists()


def test_a_dicom_without_a_site_leaves_an_unknown_lesion_unknown(world):
    lesion = unknown_site_lesion(world)
    image = services.upload_images(user=world.clin_a, lesion=lesion, files=[dcm("plain.dcm", dicom_file())]).accepted[0]
    lesion.refresh_from_db()
    assert lesion.anatomic_site == "unknown" and image.source_body_site == "" and image.acquired_on is None


def test_a_site_from_the_file_rescores_the_images_scored_without_it(world, dispatched,
                                                                    django_capture_on_commit_callbacks):
    lesion = unknown_site_lesion(world)
    with django_capture_on_commit_callbacks(execute=True):
        photo = services.upload_images(user=world.clin_a, lesion=lesion, files=[upload("Jane Doe.jpg", jpeg())])
    with django_capture_on_commit_callbacks(execute=True):
        scan = services.upload_images(user=world.clin_a, lesion=lesion,
                                      files=[dcm("Jane Doe.dcm", dicom_file(AnatomicRegionSequence=FOREARM_LEFT))])
    (photo,), (scan,) = photo.accepted, scan.accepted
    first, again = Prediction.objects.filter(image=photo).order_by("context_revision")
    assert (first.context_revision, again.context_revision, again.status) == (0, 1, "pending")
    assert again.reason == f"site set from unknown to upper extremity from the DICOM file of image {scan.pk}"
    (own,) = Prediction.objects.filter(image=scan)
    assert own.context_revision == 0 and own.reason == ""
    assert sorted(dispatched) == sorted([first.pk, again.pk, own.pk])


def test_a_site_the_clinician_chose_rescores_nothing(world, dispatched):
    photo = services.upload_images(user=world.clin_a, lesion=world.lesion_a, files=[upload("a.jpg", jpeg())])
    services.upload_images(user=world.clin_a, lesion=world.lesion_a,
                           files=[dcm("arm.dcm", dicom_file(AnatomicRegionSequence=FOREARM_LEFT))])
    assert Prediction.objects.filter(image=photo.accepted[0]).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_failed_send_after_the_commit_keeps_the_dicom_upload_and_its_rescore(world, media_root, monkeypatch):
    """The database drops after the rows commit, while the re-score's send is claimed: the upload
    stands (rows and file) and every prediction stays pending for the sweep."""
    from django.db import OperationalError

    from cases import prediction_states

    def dropped(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(prediction_states, "claim_dispatch", dropped)
    lesion = unknown_site_lesion(world)
    photo = services.upload_images(user=world.clin_a, lesion=lesion, files=[upload("a.jpg", jpeg())]).accepted[0]
    outcome = services.upload_images(user=world.clin_a, lesion=lesion,
                                     files=[dcm("arm.dcm", dicom_file(AnatomicRegionSequence=FOREARM_LEFT))])
    assert outcome.rejected == [] and len(outcome.accepted) == 1
    scan = LesionImage.objects.get(pk=outcome.accepted[0].pk)
    assert sorted(stored_files(media_root)) == sorted([photo.file.name, scan.file.name])
    assert Prediction.objects.filter(image=photo, context_revision=1, status="pending").exists()
    assert Prediction.objects.get(image=scan).status == "pending"
    lesion.refresh_from_db()
    assert lesion.anatomic_site == "upper extremity"


def test_a_rolled_back_image_rolls_back_the_site_too(world, media_root, monkeypatch):
    from django.db import DatabaseError

    def broken_create(*args, **kwargs):
        raise DatabaseError("disk I/O error")

    monkeypatch.setattr(Prediction.objects, "create", broken_create)
    lesion = unknown_site_lesion(world)
    outcome = services.upload_images(user=world.clin_a, lesion=lesion,
                                     files=[dcm("arm.dcm", dicom_file(AnatomicRegionSequence=FOREARM_LEFT))])
    assert outcome.rejected and "database error" in outcome.rejected[0][1]
    assert lesion.anatomic_site == "unknown"
    lesion.refresh_from_db()
    assert lesion.anatomic_site == "unknown" and stored_files(media_root) == []
    assert not AuditEvent.objects.filter(action="update", object_type="lesion").exists()


def test_same_pixels_as_dicom_and_png_are_one_image(world):
    pixels = rgb_pixels(seed=5)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    outcome = services.upload_images(user=world.clin_a, lesion=world.lesion_a,
                                     files=[upload("a.png", buffer.getvalue(), "image/png"),
                                            dcm("a.dcm", dicom_file(pixels))])
    assert len(outcome.accepted) == 1 and outcome.duplicates[0][0] == "a.dcm"


def test_a_vl_photograph_is_stored_as_a_clinical_photo_whatever_the_form_said(world, dispatched):
    """The form's default is "dermoscopic"; the SOP class says it is a clinical photo, so it is
    stored as one, with a note, and scoring never treats it as dermoscopy (CLINICAL_PHOTO_NOTE)."""
    from cases.scoring import CLINICAL_PHOTO_NOTE, assessment_of

    data = dicom_file(rgb_pixels(seed=6), sop_class=VLPhotographicImageStorage)
    outcome = services.upload_images(user=world.clin_a, lesion=world.lesion_a, files=[dcm("photo.dcm", data)],
                                     kind=LesionImage.Kind.DERMOSCOPIC)
    (image,) = outcome.accepted
    assert LesionImage.objects.get(pk=image.pk).kind == LesionImage.Kind.CLINICAL
    assert outcome.notes == [("photo.dcm", "The DICOM file is a VL Photographic Image Storage object, a clinical "
                                           "photo rather than a dermoscopic image, so it was stored as a clinical "
                                           "photo: the model does not score those, and a dermatologist will look "
                                           "at it.")]
    event = AuditEvent.objects.get(action="upload", object_id=str(image.pk))
    assert event.new_values["kind"] == "clinical"
    assert event.new_values["source_sop_class"] == "VL Photographic Image Storage"
    assessable, notes = assessment_of(object(), image)
    assert not assessable and notes == [CLINICAL_PHOTO_NOTE]


def test_a_clinicians_explicit_clinical_choice_is_kept_for_a_dermoscopic_dicom_and_said(world, dispatched):
    """The safer of the two: an explicit "clinical" is never overridden into a scored image."""
    outcome = services.upload_images(user=world.clin_a, lesion=world.lesion_a, kind=LesionImage.Kind.CLINICAL,
                                     files=[dcm("derm.dcm", dicom_file(rgb_pixels(seed=7))),
                                            upload("close-up.jpg", jpeg())])
    derm, photo = outcome.accepted
    assert (derm.kind, photo.kind) == (LesionImage.Kind.CLINICAL, LesionImage.Kind.CLINICAL)
    assert [name for name, _ in outcome.notes] == ["derm.dcm"]
    assert outcome.notes[0][1] == ("The DICOM file is a Dermoscopic Photography Image Storage object, but it was "
                                   "stored as a clinical photo, as chosen, so the model does not score it; upload "
                                   "it again as dermoscopic to have it scored.")
    same = services.upload_images(user=world.clin_a, lesion=world.lesion_a, kind=LesionImage.Kind.DERMOSCOPIC,
                                  files=[dcm("derm2.dcm", dicom_file(rgb_pixels(seed=8)))])
    assert same.accepted[0].kind == LesionImage.Kind.DERMOSCOPIC and same.notes == []


def test_a_greyscale_dicom_upload_stores_nothing(world, media_root):
    grey = np.full((48, 64), 90, dtype=np.uint8)
    outcome = services.upload_images(user=world.clin_a, lesion=world.lesion_a,
                                     files=[dcm("grey.dcm", dicom_file(grey, sop_class=VLPhotographicImageStorage))])
    assert outcome.accepted == [] and len(outcome.rejected) == 1
    assert outcome.rejected[0][0] == "grey.dcm" and "greyscale (MONOCHROME2)" in outcome.rejected[0][1]
    assert LesionImage.objects.count() == 0 and stored_files(media_root) == []


# --- the web form and the image page -------------------------------------------------------------


def test_web_form_stores_a_vl_photograph_sent_as_dermoscopic_as_a_clinical_photo(client, world, media_root):
    client.force_login(world.clin_a)
    photo = dcm("photo.dcm", dicom_file(rgb_pixels(seed=9), sop_class=VLPhotographicImageStorage))
    response = client.post(f"/lesions/{world.lesion_a.pk}/", {"images": [photo], "kind": "dermoscopic"}, follow=True)
    texts = [str(m) for m in response.context["messages"]]
    assert any("clinical photos are not scored by the model" in t for t in texts), texts
    assert any("“photo.dcm”: The DICOM file is a VL Photographic Image Storage object" in t for t in texts), texts
    assert LesionImage.objects.get().kind == LesionImage.Kind.CLINICAL


def test_web_form_accepts_dicom_and_reports_a_bad_one_next_to_a_good_jpeg(client, world, media_root):
    client.force_login(world.clin_a)
    good = dcm("good.dcm", dicom_file(AnatomicRegionSequence=FOREARM_LEFT, AcquisitionDate="20240305"))
    ct = dcm("scan.dcm", dicom_file(np.zeros((64, 64), dtype=np.uint16), sop_class=CTImageStorage))
    response = client.post(f"/lesions/{world.lesion_a.pk}/",
                           {"images": [good, ct, upload("photo.jpg", jpeg())], "kind": "dermoscopic"}, follow=True)
    texts = [str(m) for m in response.context["messages"]]
    assert any("2 image(s) uploaded" in t for t in texts), texts
    assert any("“scan.dcm” was rejected: This DICOM file is a CT Image Storage object" in t for t in texts), texts
    assert sorted(LesionImage.objects.values_list("original_name", "original_format")) == [
        ("good.dcm", "DICOM"), ("photo.jpg", "JPEG")]
    assert len(stored_files(media_root)) == 2

    image = LesionImage.objects.get(original_format="DICOM")
    page = client.get(f"/images/{image.pk}/").content.decode()
    assert "taken 2024-03-05" in page
    assert "Imported from a DICOM file that gave the body site as upper extremity" in page
    assert dicomgen.PATIENT_NAME not in page and dicomgen.PATIENT_ID not in page


def test_only_bad_dicom_is_a_400_with_its_message(client, world):
    client.force_login(world.clin_a)
    response = client.post(f"/lesions/{world.lesion_a.pk}/",
                           {"images": [dcm("cut.dcm", dicom_file()[:-5000])], "kind": "dermoscopic"}, follow=True)
    assert response.status_code == 400
    texts = [str(m) for m in response.context["messages"]]
    assert len(texts) == 1 and "“cut.dcm” was rejected: The DICOM file is truncated" in texts[0]
    assert LesionImage.objects.count() == 0


def test_the_file_pickers_offer_dicom(client, world):
    assert ".dcm" in UPLOAD_ACCEPT and "application/dicom" in UPLOAD_ACCEPT
    field = UploadForm.base_fields["images"]
    assert field.widget.attrs["accept"] == UPLOAD_ACCEPT and "DICOM" in field.help_text
    client.force_login(world.clin_a)
    page = client.get(f"/lesions/{world.lesion_a.pk}/").content.decode()
    assert f'accept="{UPLOAD_ACCEPT}"' in page and "JPEG, PNG, TIFF or DICOM (.dcm)" in page


def test_non_image_message_mentions_dicom():
    with pytest.raises(UploadRejected, match="Only JPEG, PNG, TIFF and DICOM images are accepted"):
        normalise_upload(upload("notes.dcm", b"just some text, not an image at all\n" * 4))
