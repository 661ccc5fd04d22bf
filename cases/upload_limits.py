"""A bound on the file bytes of one request, enforced while Django reads it, before any view or login.

Django caps the number of files (DATA_UPLOAD_MAX_NUMBER_FILES) and the non-file fields
(DATA_UPLOAD_MAX_MEMORY_SIZE), never the files' bytes: without this, anyone could send a body of any
size and the server would spool all of it to disk before the upload form refused it. The handler
comes first in FILE_UPLOAD_HANDLERS (Django's own follow it and keep the files). It refuses the
request with `UploadTooLarge`, a RequestDataTooBig, so the client gets the site's 400 page or the
API's JSON 400 saying why and nothing is saved; it never stops the upload silently, which would hand
the view the files read so far as if they were the whole upload.

- A declared Content-Length above UPLOAD_MAX_TOTAL_BYTES plus the allowance for the other fields
  (DATA_UPLOAD_MAX_MEMORY_SIZE) is refused before a byte of the body is read.
- Otherwise the running total of file bytes is counted and the request refused once it passes
  UPLOAD_MAX_TOTAL_BYTES.
"""
from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.files.uploadhandler import FileUploadHandler


class UploadTooLarge(RequestDataTooBig):
    """The request's files exceed UPLOAD_MAX_TOTAL_BYTES; its message is meant for the client."""


def request_limit_bytes() -> int:
    """The largest body (Content-Length) an upload may declare: the files' cap plus the allowance
    for the other fields and the multipart headers. A reverse proxy's body limit should be this."""
    return settings.UPLOAD_MAX_TOTAL_BYTES + (settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0)


def refusal() -> UploadTooLarge:
    return UploadTooLarge(
        f"The upload is too large: one request may carry at most {settings.UPLOAD_MAX_TOTAL_BYTES:,} bytes of "
        f"files ({settings.UPLOAD_MAX_FILES} images of up to {settings.UPLOAD_MAX_BYTES:,} bytes each).")


class TotalUploadSizeHandler(FileUploadHandler):
    """Counts the file bytes of one multipart request and refuses it past UPLOAD_MAX_TOTAL_BYTES;
    passes every chunk on unchanged to the handlers after it."""

    def __init__(self, request=None) -> None:
        super().__init__(request)
        self.total = 0

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        self.total = 0
        if content_length > request_limit_bytes():
            raise refusal()
        return None  # the multipart parser goes on, with this and the following handlers

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.total += len(raw_data)
        if self.total > settings.UPLOAD_MAX_TOTAL_BYTES:
            raise refusal()
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None  # the next handler makes the file
