"""Bad uploads not covered by tests/cases/test_uploads.py, and failures in the middle of an upload.

Each rejection carries its own message and leaves the database rows, the audit log and the media
folder exactly as they were; a failure after the file was written removes the file again.
"""
from __future__ import annotations

import struct

import pytest
from django.db import DatabaseError, IntegrityError, OperationalError
from PIL import Image

from audit.models import AuditEvent
from cases.models import LesionImage, Prediction
from tests.support.case_helpers import stored_files
from tests.support.imagegen import encode, jpeg, pattern, upload

pytestmark = pytest.mark.django_db


def post(client, world, *files):
    client.force_login(world.clin_a)
    return client.post(f"/lesions/{world.lesion_a.pk}/", {"images": list(files), "kind": "dermoscopic"}, follow=True)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def state(media_root):
    return (LesionImage.objects.count(), Prediction.objects.count(), AuditEvent.objects.filter(action="upload").count(),
            stored_files(media_root))


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real JPEG whose SOF0 header is rewritten to declare other dimensions (a header bomb)."""
    data = bytearray(jpeg(size=(64, 64)))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def multipage_tiff() -> bytes:
    frames = [pattern((64, 64), seed=i) for i in range(3)]
    return encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])


REJECTIONS = [
    ("bomb.jpg", lambda: jpeg_declaring(30000, 30000), "too many pixels"),
    ("pages.tif", multipage_tiff, "multi-page"),
    ("drawing.svg", lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><script>alert(1)'
                            b'</script></svg>', "SVG"),
    ("bmp.jpg", lambda: encode(pattern((64, 64)), "BMP"), "BMP"),
    ("webp.jpg", lambda: encode(pattern((64, 64)), "WEBP"), "WebP"),
    ("garbage.jpg", lambda: b"\xff\xd8\xff\xe0" + bytes(range(256)) * 20, "starts like a JPEG"),
]


@pytest.mark.parametrize("name,make,expected", REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_more_bad_files_are_rejected_and_leave_nothing(client, world, media_root, name, make, expected):
    before = state(media_root)
    response = post(client, world, upload(name, make()))
    assert response.status_code == 400
    texts = messages_of(response)
    assert len(texts) == 1 and name in texts[0] and "rejected" in texts[0], texts
    assert expected.lower() in texts[0].lower(), texts[0]
    assert state(media_root) == before


def test_over_the_byte_limit_message_names_the_limit_and_changes_nothing(client, world, media_root, settings):
    settings.UPLOAD_MAX_BYTES = 50_000
    data = jpeg(size=(400, 400))
    assert len(data) > 50_000
    before = state(media_root)
    response = post(client, world, upload("big.jpg", data))
    assert response.status_code == 400
    [text] = messages_of(response)
    assert "big.jpg" in text and "rejected" in text and "the limit is 0.1 MB" in text, text
    assert state(media_root) == before


def test_hostile_name_of_a_rejected_file_is_escaped_and_stripped_of_paths(client, world, media_root):
    before = state(media_root)
    response = post(client, world, upload("..\\..\\etc\\<img src=x onerror=alert(1)>.jpg", b"not an image at all"))
    assert response.status_code == 400
    [text] = messages_of(response)
    assert "<img src=x onerror=alert(1)>.jpg" in text and ".." not in text and "etc" not in text, text
    body = response.content.decode()
    assert "<img src=x" not in body and "&lt;img src=x onerror=alert(1)&gt;.jpg" in body
    assert state(media_root) == before


def test_unicode_and_very_long_names_are_kept_as_display_names_only(client, world, media_root):
    name = "Läsion 皮膚 🩺 " + "x" * 400 + ".JPG"
    post(client, world, upload(name, jpeg(seed=5)))
    image = LesionImage.objects.get()
    assert image.original_name.startswith("Läsion 皮膚 🩺") and image.original_name.endswith(".JPG")
    assert len(image.original_name) <= 120
    assert stored_files(media_root) == [image.file.name]
    assert image.file.name.startswith("lesion-images/") and image.file.name.isascii()


def test_exif_rotated_jpeg_is_upright_and_the_duplicate_check_uses_upright_pixels(client, world, media_root):
    from PIL import ExifTags

    upright = pattern((60, 120), seed=9)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 8  # stored rotated 90° clockwise; display turns it back
    rotated = encode(upright.transpose(Image.Transpose.ROTATE_270), "PNG", exif=exif)
    post(client, world, upload("rotated.png", rotated, "image/png"))
    response = post(client, world, upload("upright.png", encode(upright, "PNG"), "image/png"))
    image = LesionImage.objects.get()
    assert (image.width, image.height) == (60, 120)
    assert any("upright.png" in t and "already uploaded" in t for t in messages_of(response))
    assert len(stored_files(media_root)) == 1


# --- failures in the middle of an upload -------------------------------------------------------

def _fail_audit(monkeypatch, exc):
    from audit import log as audit_log

    real = audit_log.record

    def record(*, action, **kwargs):
        if action == "upload":
            raise exc
        return real(action=action, **kwargs)

    monkeypatch.setattr(audit_log, "record", record)


def _fail_image_save(monkeypatch, exc):
    def save(self, *args, **kwargs):
        raise exc

    monkeypatch.setattr(LesionImage, "save", save)


@pytest.mark.parametrize("where,exc", [
    ("audit", DatabaseError("disk I/O error")),
    ("audit", OperationalError("database is locked")),
    ("image_row", DatabaseError("could not serialize access")),
], ids=["audit-db-error", "audit-locked", "image-row-error"])
def test_database_error_at_any_step_leaves_no_row_and_no_file(client, world, media_root, monkeypatch, where, exc):
    (_fail_audit if where == "audit" else _fail_image_save)(monkeypatch, exc)
    before = state(media_root)
    response = post(client, world, upload("lost.jpg", jpeg()))
    texts = messages_of(response)
    assert any("lost.jpg" in t and "database error" in t for t in texts), texts
    assert state(media_root) == before


def test_a_lost_race_on_the_unique_constraint_is_a_duplicate_and_leaves_no_file(client, world, media_root,
                                                                                monkeypatch):
    _fail_image_save(monkeypatch, IntegrityError("UNIQUE constraint failed: lesion_id, sha256"))
    before = state(media_root)
    texts = messages_of(post(client, world, upload("race.jpg", jpeg())))
    assert any("race.jpg" in t and "already uploaded" in t for t in texts), texts
    assert state(media_root) == before


def test_an_unexpected_error_mid_upload_still_removes_the_file(client, world, media_root, monkeypatch):
    """A bug while saving one file costs that file only: it is reported, and neither its stored copy
    nor any row of it remains (the next file of the batch goes on; tests/cases/test_uploads.py)."""
    _fail_audit(monkeypatch, RuntimeError("bug"))
    client.raise_request_exception = True
    before = state(media_root)
    texts = messages_of(post(client, world, upload("bug.jpg", jpeg())))
    assert any("bug.jpg" in t and "could not be read or stored" in t for t in texts), texts
    assert state(media_root) == before


def test_storage_failure_is_reported_per_file_and_keeps_the_good_ones(client, world, media_root, monkeypatch):
    from django.core.files.storage import default_storage

    real_save = default_storage.save
    calls = []

    def flaky_save(name, content, *args, **kwargs):
        calls.append(name)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real_save(name, content, *args, **kwargs)

    monkeypatch.setattr(default_storage, "save", flaky_save)
    response = post(client, world, upload("full.jpg", jpeg(seed=1)), upload("ok.jpg", jpeg(seed=2)))
    texts = messages_of(response)
    assert any("full.jpg" in t and "rejected" in t and "could not be stored" in t for t in texts), texts
    assert list(LesionImage.objects.values_list("original_name", flat=True)) == ["ok.jpg"]
    assert Prediction.objects.count() == 1
    assert len(stored_files(media_root)) == 1
