"""Uploads over HTTP: every kind of bad file is rejected with its own message and leaves nothing
behind; good files are normalised (upright, RGB, no metadata, generated name)."""
from __future__ import annotations

import io
import logging

import pytest
from django.core.files.storage import FileSystemStorage
from botocore.exceptions import ClientError
from django.db import DatabaseError
from PIL import ExifTags, Image

from audit.models import AuditEvent
from cases.forms import UploadForm
from cases.uploads import megabytes
from cases.models import LesionImage, Prediction
from tests.support.case_helpers import stored_files
from tests.support.imagegen import (SRGB_PRIMARIES, encode, jpeg, mpo, pattern, png, png_chunk, png_declaring,
                                    rgb_icc_profile, tiff_pages, two_tone, upload, zeros_png)

pytestmark = pytest.mark.django_db


def post(client, world, *files, kind="dermoscopic"):
    client.force_login(world.clin_a)
    return client.post(f"/lesions/{world.lesion_a.pk}/", {"images": list(files), "kind": kind}, follow=True)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def state(media_root):
    return (LesionImage.objects.count(), Prediction.objects.count(),
            AuditEvent.objects.filter(action="upload").count(), stored_files(media_root))


def stored_image(image: LesionImage) -> Image.Image:
    with image.file.open("rb") as handle:
        data = handle.read()
    opened = Image.open(io.BytesIO(data))
    opened.load()
    return opened


def truncated_jpeg() -> bytes:
    data = jpeg(size=(256, 256), seed=3)
    return data[: len(data) // 2]


def animated_gif() -> bytes:
    frames = [Image.new("P", (64, 64), i) for i in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def animated_png() -> bytes:
    frames = [pattern((64, 64), seed=i) for i in range(2)]
    return encode(frames[0], "PNG", save_all=True, append_images=frames[1:])


def truncated_multipage_tiff() -> bytes:
    """Three pages cut off half-way: the first page's header reads, the page chain does not."""
    pages = [pattern((64, 64), seed=i) for i in range(3)]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    return data[: len(data) // 2]


REJECTIONS = [
    ("empty.jpg", lambda: b"", "empty"),
    ("truncated.jpg", truncated_jpeg, "truncated"),
    ("notes.jpg", lambda: b"Patient notes: this is just text, not an image.\n" * 5, "text file"),
    ("page.jpg", lambda: b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>", "HTML"),
    ("fake.png", lambda: b"\x89PNG\r\n\x1a\n<html><body>not really a png</body></html>", "starts like a PNG"),
    ("drawing.jpg", lambda: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="99" height="99">'
                            b'<circle r="40"/></svg>', "SVG"),
    ("huge.png", lambda: png_declaring(30000, 30000), "too many pixels"),
    ("anim.gif", animated_gif, "GIF"),
    ("anim.png", animated_png, "Animated"),
    ("pages.tif", truncated_multipage_tiff, "list of pages is damaged or truncated"),
    ("pages2.tif", lambda: tiff_pages((pattern((64, 64), 1), 0), (pattern((64, 64), 2), 0)), "multi-page"),
    ("thumb-first.tif", lambda: tiff_pages((pattern((32, 32), 1), 1), (pattern((64, 64), 2), 0)), "multi-page"),
    ("tiny.png", lambda: png(size=(10, 10)), "at least 32 pixels"),
    ("doc.pdf.jpg", lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "PDF"),
]


@pytest.mark.parametrize("name,make,expected", REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_bad_file_is_rejected_with_specific_message_and_leaves_nothing(client, world, media_root, dispatched,
                                                                         name, make, expected):
    before = state(media_root)
    response = post(client, world, upload(name, make()))
    assert response.status_code == 400
    texts = messages_of(response)
    assert len(texts) == 1 and name in texts[0] and "rejected" in texts[0]
    assert expected.lower() in texts[0].lower(), texts[0]
    assert state(media_root) == before
    assert dispatched == []


def test_decompression_bomb_with_real_pixel_data_is_rejected_before_decoding(client, world, media_root, settings):
    settings.UPLOAD_MAX_PIXELS = 1_000_000
    bomb = zeros_png(2000, 2000)  # 4 MP of valid pixels in a few KB
    assert len(bomb) < 50_000
    before = state(media_root)
    response = post(client, world, upload("bomb.png", bomb, "image/png"))
    text = messages_of(response)[0]
    assert "2000×2000" in text and "limit is 1.0 MP" in text
    assert state(media_root) == before


def test_file_over_the_byte_limit_is_rejected_with_the_limit_the_form_states(client, world, media_root, settings):
    settings.UPLOAD_MAX_BYTES = 2_000
    data = jpeg(size=(128, 128))
    assert len(data) > 2_000
    before = state(media_root)
    text = messages_of(post(client, world, upload("big.jpg", data)))[0]
    assert f"the limit is {megabytes(2_000)}" in text
    assert state(media_root) == before
    # the default limit reads the same in the form's help and in a rejection
    assert megabytes(20_000_000) == "20 MB" and megabytes(20_500_000) == "20.5 MB"
    settings.UPLOAD_MAX_BYTES = 20_000_000
    assert "up to 20 MB each" in UploadForm.base_fields["images"].help_text


def test_too_many_files_in_one_upload_get_a_clear_message_and_nothing_is_stored(client, world, media_root, settings):
    settings.UPLOAD_MAX_FILES = 3
    before = state(media_root)
    client.force_login(world.clin_a)
    response = client.post(f"/lesions/{world.lesion_a.pk}/",
                           {"images": [upload(f"{i}.jpg", jpeg(seed=i)) for i in range(4)], "kind": "dermoscopic"})
    assert response.status_code == 400  # the form again, with the reason
    assert "4 files were chosen; upload at most 3 at a time." in response.content.decode()
    assert state(media_root) == before


def test_good_jpeg_is_stored_as_png_under_a_generated_name(client, world, media_root, django_capture_on_commit_callbacks,
                                                           dispatched):
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, world, upload("lesion.jpg", jpeg()))
    assert response.redirect_chain[-1][0].startswith(f"/cases/{world.case_a.pk}/")
    image = LesionImage.objects.get()
    assert image.file.name.startswith("lesion-images/") and image.file.name.endswith(".png")
    assert "lesion" not in image.file.name.split("/")[-1]
    assert image.original_name == "lesion.jpg" and image.original_format == "JPEG"
    assert (image.width, image.height) == (96, 64) and image.uploaded_by == world.clin_a
    stored = stored_image(image)
    assert stored.format == "PNG" and stored.mode == "RGB"
    prediction = Prediction.objects.get(image=image)
    assert prediction.status == "pending" and prediction.model_version.version == "unit-test-v1"
    assert dispatched == [prediction.pk]
    assert AuditEvent.objects.filter(action="upload", object_id=str(image.pk), patient_id=world.patient_a.pk).exists()


def test_exif_rotated_jpeg_is_stored_upright(client, world):
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # camera held sideways: display rotated 90° clockwise
    data = encode(two_tone((120, 60)), "JPEG", quality=95, exif=exif)
    post(client, world, upload("rotated.jpg", data))
    stored = stored_image(LesionImage.objects.get())
    assert stored.size == (60, 120)
    top, bottom = stored.getpixel((30, 15)), stored.getpixel((30, 105))
    assert top[0] > 200 and top[2] < 60, top  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_gps_exif_is_stripped(client, world):
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "PhoneCo"
    exif[ExifTags.IFD.GPSInfo] = {ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (51.0, 30.0, 12.0)}
    data = encode(pattern(), "JPEG", quality=90, exif=exif)
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(ExifTags.IFD.GPSInfo)
    post(client, world, upload("gps.jpg", data))
    image = LesionImage.objects.get()
    with image.file.open("rb") as handle:
        raw = handle.read()
    stored = Image.open(io.BytesIO(raw))
    assert len(stored.getexif()) == 0 and "exif" not in stored.info and "icc_profile" not in stored.info
    assert b"Exif" not in raw and b"PhoneCo" not in raw


def test_16_bit_png_is_scaled_to_8_bit_rgb(client, world):
    import numpy as np

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    image16 = Image.fromarray(ramp)
    assert image16.mode.startswith("I;16")
    post(client, world, upload("deep.png", encode(image16, "PNG"), "image/png"))
    stored = stored_image(LesionImage.objects.get())
    assert stored.mode == "RGB"
    assert stored.getpixel((63, 63))[0] == round(int(ramp[63, 63]) / 257)
    assert stored.getpixel((0, 0)) == (0, 0, 0)


def test_grayscale_becomes_rgb(client, world):
    post(client, world, upload("gray.png", encode(Image.new("L", (64, 64), 128), "PNG"), "image/png"))
    stored = stored_image(LesionImage.objects.get())
    assert stored.mode == "RGB" and stored.getpixel((5, 5)) == (128, 128, 128)


def test_cmyk_jpeg_becomes_rgb(client, world):
    post(client, world, upload("print.jpg", encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG")))
    stored = stored_image(LesionImage.objects.get())
    red, green, blue = stored.getpixel((10, 10))
    assert stored.mode == "RGB" and red > 200 and green < 50 and blue < 50


def test_srgb_tagged_image_is_stored_unchanged(client, world):
    from PIL import ImageCms

    original = pattern((64, 64), seed=4)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    post(client, world, upload("srgb.png", encode(original, "PNG", icc_profile=srgb), "image/png"))
    assert stored_image(LesionImage.objects.get()).tobytes() == original.tobytes()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_pixels_in_another_colour_space_are_converted_to_srgb(client, world, fmt):
    red, green, blue = SRGB_PRIMARIES
    swapped = rgb_icc_profile((green, red, blue), description="red and green swapped")  # far from sRGB: no doubt
    data = encode(Image.new("RGB", (64, 64), (200, 30, 30)), fmt, icc_profile=swapped, **(
        {"quality": 95} if fmt == "JPEG" else {}))
    post(client, world, upload(f"wide.{fmt.lower()}", data, f"image/{fmt.lower()}"))
    stored = stored_image(LesionImage.objects.get())
    r, g, b = stored.getpixel((32, 32))
    assert g > 180 and r < 60 and b < 60, (r, g, b)  # what the file's own profile says the colour is
    assert "icc_profile" not in stored.info


@pytest.mark.parametrize("image,profile", [
    (pattern((64, 64), seed=5), b"not an ICC profile at all"),
    (Image.new("L", (64, 64), 128), rgb_icc_profile()),  # an RGB profile on a greyscale image
], ids=["damaged", "wrong colour space"])
def test_a_profile_that_cannot_be_applied_keeps_the_pixels(client, world, image, profile):
    response = post(client, world, upload("tagged.png", encode(image, "PNG", icc_profile=profile), "image/png"))
    assert any("1 image(s) uploaded" in t for t in messages_of(response)), messages_of(response)
    assert stored_image(LesionImage.objects.get()).tobytes() == image.convert("RGB").tobytes()


def test_png_alpha_is_composited_on_white(client, world):
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    image.paste((200, 0, 0, 255), (0, 0, 32, 64))
    post(client, world, upload("alpha.png", encode(image, "PNG"), "image/png"))
    stored = stored_image(LesionImage.objects.get())
    assert stored.getpixel((10, 10)) == (200, 0, 0)
    assert stored.getpixel((50, 10)) == (255, 255, 255)


def test_tiff_is_accepted(client, world):
    post(client, world, upload("scan.tif", encode(pattern(), "TIFF"), "image/tiff"))
    assert LesionImage.objects.get().original_format == "TIFF"


def test_camera_jpeg_with_an_mpo_preview_is_stored_as_its_primary_jpeg(client, world):
    primary = pattern((96, 64), seed=7)
    data = mpo(primary, primary.resize((48, 32)))
    opened = Image.open(io.BytesIO(data))
    assert opened.format == "MPO" and opened.n_frames == 2
    opened.seek(0)
    expected = opened.convert("RGB")
    response = post(client, world, upload("IMG_0001.JPG", data))
    assert any("1 image(s) uploaded" in t for t in messages_of(response)), messages_of(response)
    image = LesionImage.objects.get()
    assert image.original_format == "JPEG" and (image.width, image.height) == (96, 64)
    assert stored_image(image).tobytes() == expected.tobytes()


def test_tiff_with_reduced_resolution_pages_is_stored_as_its_first_page(client, world):
    full = pattern((96, 64), seed=8)
    data = tiff_pages((full, 0), (full.resize((48, 32)), 1), (full.resize((24, 16)), 1))
    post(client, world, upload("scan.tif", data, "image/tiff"))
    image = LesionImage.objects.get()
    assert image.original_format == "TIFF" and (image.width, image.height) == (96, 64)
    assert stored_image(image).tobytes() == full.tobytes()


@pytest.mark.parametrize("name,expected", [
    ("../../../../etc/passwd.jpg", "passwd.jpg"),
    ("..\\..\\windows\\system32\\evil.jpg", "evil.jpg"),
    ("lésion\u202eGPJ.exe.jpg", "lésionGPJ.exe.jpg"),
    ("é" * 300 + ".jpg", None),
])
def test_hostile_file_names_are_harmless(client, world, media_root, name, expected):
    post(client, world, upload(name, jpeg()))
    image = LesionImage.objects.get()
    assert stored_files(media_root) == [image.file.name]
    assert image.file.name.startswith("lesion-images/") and len(image.file.name) < 60
    assert "/" not in image.original_name and "\\" not in image.original_name
    assert len(image.original_name) <= 120
    if expected:
        assert image.original_name == expected
    else:
        assert image.original_name.endswith(".jpg")


def test_same_image_twice_is_reported_not_stored_twice(client, world, media_root):
    post(client, world, upload("first.jpg", png(), "image/png"))
    files_after_first = stored_files(media_root)
    # The same pixels in another container are still the same image.
    same_pixels_as_tiff = encode(Image.open(io.BytesIO(png())), "TIFF")
    response = post(client, world, upload("again.tif", same_pixels_as_tiff, "image/tiff"))
    texts = messages_of(response)
    assert any("again.tif" in t and "already uploaded" in t for t in texts), texts
    assert LesionImage.objects.count() == 1 and Prediction.objects.count() == 1
    assert stored_files(media_root) == files_after_first


def test_duplicate_within_one_batch(client, world):
    response = post(client, world, upload("a.png", png(), "image/png"), upload("b.png", png(), "image/png"))
    assert LesionImage.objects.count() == 1
    assert any("b.png" in t and "twice in this upload" in t for t in messages_of(response))


def test_mixed_batch_keeps_the_good_files(client, world, media_root):
    response = post(client, world, upload("good1.jpg", jpeg(seed=1)), upload("bad.jpg", b"<html></html>"),
                    upload("good2.png", png(seed=2), "image/png"), upload("empty.png", b""))
    texts = messages_of(response)
    assert "2 image(s) uploaded and scoring has started." in texts, texts
    assert any("bad.jpg" in t and "HTML" in t for t in texts)
    assert any("empty.png" in t and "empty" in t for t in texts)
    assert sorted(LesionImage.objects.values_list("original_name", flat=True)) == ["good1.jpg", "good2.png"]
    assert Prediction.objects.count() == 2
    assert len(stored_files(media_root)) == 2


def test_database_error_mid_upload_leaves_no_orphan_file(client, world, media_root, monkeypatch):
    def broken_create(*args, **kwargs):
        raise DatabaseError("disk I/O error")

    monkeypatch.setattr(Prediction.objects, "create", broken_create)
    response = post(client, world, upload("lost.jpg", jpeg()))
    texts = messages_of(response)
    assert any("lost.jpg" in t and "database error" in t for t in texts), texts
    assert LesionImage.objects.count() == 0 and Prediction.objects.count() == 0
    assert stored_files(media_root) == []


def test_form_without_files_shows_error_and_changes_nothing(client, world, media_root):
    client.force_login(world.clin_a)
    response = client.post(f"/lesions/{world.lesion_a.pk}/", {"kind": "dermoscopic"})
    assert response.status_code == 400 and b"Choose at least one image file" in response.content
    assert LesionImage.objects.count() == 0 and stored_files(media_root) == []


def test_broker_down_upload_still_succeeds_and_stays_pending(client, world, media_root, settings,
                                                             django_capture_on_commit_callbacks):
    from melanoma_site.celery import app

    original = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:9/0"  # discard port: nothing listens
    try:
        with django_capture_on_commit_callbacks(execute=True):
            response = post(client, world, upload("offline.jpg", jpeg()))
    finally:
        app.conf.broker_url = original
    assert any("1 image(s) uploaded" in t for t in messages_of(response))
    prediction = Prediction.objects.get()
    assert prediction.status == "pending" and prediction.enqueued_at is None
    assert len(stored_files(media_root)) == 1


def test_png_with_html_after_valid_image_data_is_normalised(client, world):
    # Trailing junk after IEND cannot survive: the stored file is re-encoded from pixels.
    data = png() + png_chunk(b"tEXt", b"Comment\0<script>alert(1)</script>") + b"<html>trailer</html>"
    post(client, world, upload("trailer.png", data, "image/png"))
    with LesionImage.objects.get().file.open("rb") as handle:
        raw = handle.read()
    assert b"<script>" not in raw and b"<html>" not in raw


# --- failures while storing: reported per file, logged without the client's file name --------------

PATIENT_NAMED = "Jane Doe 1970-01-01 mole.jpg"  # clinicians do name files after patients


def raising(exc: Exception):
    def fail(*args, **kwargs):
        raise exc
    return fail


@pytest.mark.parametrize("failure", ["database", "storage"])
def test_a_failed_save_is_logged_by_lesion_position_and_digest_not_by_file_name(client, world, media_root,
                                                                                monkeypatch, caplog, failure):
    if failure == "database":
        monkeypatch.setattr(Prediction.objects, "create", raising(DatabaseError("disk I/O error")))
    else:
        monkeypatch.setattr(FileSystemStorage, "save", raising(OSError(28, "No space left on device")))
    with caplog.at_level(logging.INFO):
        texts = messages_of(post(client, world, upload("other.jpg", jpeg(seed=1)), upload(PATIENT_NAMED, jpeg())))
    assert any(PATIENT_NAMED in t and "rejected" in t for t in texts), texts  # the user still sees which file
    failures = [r for r in caplog.records if r.name == "cases.services"]
    assert failures and all(r.exc_info for r in failures)
    assert f"(lesion {world.lesion_a.pk}, file 2 of the upload, sha256 " in failures[-1].getMessage()
    assert "Jane" not in caplog.text and "Doe" not in caplog.text
    assert LesionImage.objects.count() == 0 and stored_files(media_root) == []


def failing_once(original, exc: Exception):
    """``original``, except that its first call raises ``exc``."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise exc
        return original(*args, **kwargs)
    return wrapper


def test_an_object_storage_error_costs_only_its_file(client, world, media_root, monkeypatch, caplog):
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "PutObject")
    monkeypatch.setattr(FileSystemStorage, "save", failing_once(FileSystemStorage.save, denied))
    with caplog.at_level(logging.ERROR, logger="cases.services"):
        response = post(client, world, upload("first.jpg", jpeg(seed=1)), upload("second.jpg", jpeg(seed=2)))
    assert response.status_code == 200
    texts = messages_of(response)
    assert "“first.jpg” was rejected: It could not be read or stored; nothing was saved for this file. " \
           "Please upload it again." in texts, texts
    assert any("1 image(s) uploaded" in t for t in texts), texts
    image = LesionImage.objects.get()
    assert image.original_name == "second.jpg" and stored_files(media_root) == [image.file.name]
    assert Prediction.objects.get().image == image and AuditEvent.objects.filter(action="upload").count() == 1
    assert "file 1 of the upload" in caplog.text and "ClientError" in caplog.text


def test_an_unforeseen_reader_error_costs_only_its_file(client, world, media_root, monkeypatch):
    import cases.uploads

    monkeypatch.setattr(cases.uploads, "to_rgb_image", failing_once(cases.uploads.to_rgb_image, KeyError("mode")))
    response = post(client, world, upload("odd.png", png(seed=1), "image/png"), upload("fine.png", png(seed=2),
                                                                                          "image/png"))
    texts = messages_of(response)
    assert any("odd.png" in t and "could not be read or stored" in t for t in texts), texts
    assert list(LesionImage.objects.values_list("original_name", flat=True)) == ["fine.png"]
    assert len(stored_files(media_root)) == 1


def test_when_the_first_copy_fails_to_save_the_second_is_stored_not_called_a_duplicate(client, world, media_root,
                                                                                         monkeypatch):
    monkeypatch.setattr(FileSystemStorage, "save", failing_once(FileSystemStorage.save, OSError(28, "disk full")))
    texts = messages_of(post(client, world, upload("a.png", png(), "image/png"), upload("b.png", png(), "image/png")))
    assert any("“a.png” was rejected" in t and "storage error" in t for t in texts), texts
    assert not any("already uploaded" in t for t in texts), texts
    image = LesionImage.objects.get()
    assert image.original_name == "b.png" and stored_files(media_root) == [image.file.name]


def no_model(monkeypatch) -> None:
    def missing():
        raise RuntimeError("the bundled model is missing")
    monkeypatch.setattr("cases.services.active_version", missing)


def test_without_a_model_the_message_says_scoring_waits_not_that_it_started(client, world, monkeypatch):
    no_model(monkeypatch)
    texts = messages_of(post(client, world, upload("a.jpg", jpeg())))
    assert texts == ["1 image(s) uploaded and stored; scoring will start when a model is available."]
    assert LesionImage.objects.count() == 1 and Prediction.objects.count() == 0


def test_without_a_model_a_batch_that_stored_nothing_does_not_claim_it_stored_images(client, world, monkeypatch):
    no_model(monkeypatch)
    texts = messages_of(post(client, world, upload("bad.jpg", b"<html></html>")))
    assert len(texts) == 1 and "“bad.jpg” was rejected" in texts[0]


def test_more_files_than_a_request_may_carry_get_the_styled_page_with_the_reason(client, world, media_root, settings,
                                                                                 caplog):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 3  # Django refuses the body before the view sees it
    client.force_login(world.clin_a)
    response = client.post(f"/lesions/{world.lesion_a.pk}/",
                           {"images": [upload(f"{i}.jpg", jpeg(seed=i)) for i in range(4)], "kind": "dermoscopic"})
    assert response.status_code == 400 and response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    assert "The request was refused" in page and "Log out" in page  # the site's own page, signed in
    assert (f"Too many files in one request (more than 3); an upload takes at most {settings.UPLOAD_MAX_FILES} "
            f"images.") in page
    assert "with fewer files at a time" in page
    assert [r.name for r in caplog.records if r.name.startswith("django.security.")] == [
        "django.security.TooManyFilesSent"]
    assert LesionImage.objects.count() == 0 and stored_files(media_root) == []


def test_the_upload_form_tells_the_browser_the_file_limit(client, world, settings):
    settings.UPLOAD_MAX_FILES = 7  # a deployment's own limit reaches the page
    client.force_login(world.clin_a)
    for path in (f"/lesions/{world.lesion_a.pk}/", f"/cases/{world.case_a.pk}/"):
        page = client.get(path).content.decode()
        assert f'data-max-files="{settings.UPLOAD_MAX_FILES}"' in page, path
