"""Receive an uploaded study: stream it to disk, within limits, and vet any zip archive.

``POST /api/v1/uploads`` accepts

* ``application/zip`` (or ``application/x-zip-compressed``, ``application/octet-stream``):
  the body is one zip archive of DICOM files;
* ``application/dicom``: the body is one DICOM file;
* ``multipart/form-data``: any number of file parts, each a DICOM file or a zip archive.

The body is streamed (never held in memory) into a new folder under the uploads folder
(``<data_dir>/spool/uploads/<id>.partial``), counting bytes: past ``max_bytes`` the request
is refused with 413 and the folder is deleted. Client file names are never used as paths
(parts are numbered). Zip archives are extracted with
:func:`ct_triage.dicom_bridge.inputs.extract_zip` (zip-slip, links, encryption, entry count,
expanded size and ratio checks) into the upload folder only; a refused archive gives 400 and
the folder is deleted. A complete upload is ``fsync``-ed, renamed to ``<id>/`` (atomic) and
its DICOM files lie under ``<id>/files/``: an upload answered 202 is on disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from ct_triage.dicom_bridge.inputs import ZipLimits, extract_zip
from ct_triage.models.durable import fsync_dir, fsync_tree
from ct_triage.models.errors import InvalidInput
from ct_triage.server.api.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

__all__ = ["ReceivedUpload", "UploadLimits", "receive_upload"]

logger = logging.getLogger(__name__)

_ZIP_TYPES = {"application/zip", "application/x-zip-compressed", "application/octet-stream"}
_ZIP_MAGIC = b"PK\x03\x04"
#: After the limit is passed, read (and discard) at most this much more of the body so that
#: the client, still sending, gets to read the 413 answer instead of a reset connection.
_DRAIN_BYTES = 64 * 1024**2


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """Limits of one upload.

    Parameters
    ----------
    max_bytes
        Largest request body.
    zip_limits
        Limits applied to each zip archive (entries, expanded size, ratio).
    max_parts
        Most file parts of a multipart body.
    """

    max_bytes: int
    zip_limits: ZipLimits = field(default_factory=ZipLimits)
    max_parts: int = 50_000


@dataclass(frozen=True, slots=True)
class ReceivedUpload:
    """A complete, vetted upload.

    Parameters
    ----------
    upload_id
        The folder name under the uploads folder.
    folder
        ``<uploads>/<upload_id>``.
    files_dir
        ``<folder>/files``: the DICOM files (and extracted archives), the job's input.
    sha256
        Digest of the uploaded bytes (parts in order): the job's idempotency key.
    n_bytes
        Bytes received.
    n_parts
        Files received (a zip counts as one).
    """

    upload_id: str
    folder: Path
    files_dir: Path
    sha256: str
    n_bytes: int
    n_parts: int


class _Sink:
    """Writes parts to numbered files, counting and hashing what arrives."""

    def __init__(self, parts_dir: Path, limits: UploadLimits) -> None:
        self.parts_dir = parts_dir
        self.limits = limits
        self.digest = hashlib.sha256()
        self.n_bytes = 0
        self.n_parts = 0
        self._fh: IO[bytes] | None = None

    def begin(self) -> None:
        self.n_parts += 1
        if self.n_parts > self.limits.max_parts:
            raise PayloadTooLarge(f"upload has more than {self.limits.max_parts} files")
        self._fh = (self.parts_dir / f"{self.n_parts:06d}").open("wb")

    def data(self, chunk: bytes) -> None:
        if self._fh is None:
            return
        self.digest.update(chunk)
        self._fh.write(chunk)

    def end(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class _MultipartSink:
    """Adapts :class:`MultipartParser` callbacks to a :class:`_Sink` (file parts only)."""

    def __init__(self, sink: _Sink, boundary: bytes) -> None:
        self.sink = sink
        self._field = b""
        self._value = b""
        self._headers: dict[bytes, bytes] = {}
        self._is_file = False
        self.parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
            },
        )

    def _part_begin(self) -> None:
        self._headers = {}
        self._is_file = False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = b""
        self._value = b""

    def _headers_finished(self) -> None:
        _disp, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._is_file = b"filename" in options
        if self._is_file:
            self.sink.begin()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self.sink.data(data[start:end])

    def _part_end(self) -> None:
        if self._is_file:
            self.sink.end()
        self._is_file = False

    def write(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except FormParserError as exc:
            raise BadRequest(f"malformed multipart/form-data body: {exc}") from exc

    def finalize(self) -> None:
        try:
            self.parser.finalize()
        except FormParserError as exc:
            raise BadRequest(f"malformed multipart/form-data body: {exc}") from exc


async def _drain(request: Request) -> None:
    drained = 0
    try:
        async for chunk in request.stream():
            drained += len(chunk)
            if drained > _DRAIN_BYTES:
                break
    except Exception:  # the client went away: nothing more to do
        logger.debug("client disconnected while an oversized upload was drained")


def _too_big(limits: UploadLimits) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"upload larger than the limit of {limits.max_bytes / 1024**2:.0f} MiB "
        f"({limits.max_bytes} bytes); split the study or raise CT_TRIAGE_UPLOAD_MAX_BYTES"
    )


def _unpack(folder: Path, parts_dir: Path, limits: UploadLimits) -> Path:
    """Move DICOM parts to ``files/`` and extract zip parts there (vetted); remove parts."""
    files_dir = folder / "files"
    files_dir.mkdir()
    for part in sorted(parts_dir.iterdir()):
        with part.open("rb") as fh:
            magic = fh.read(4)
        if magic == _ZIP_MAGIC:
            dest = files_dir / f"zip{part.name}"
            dest.mkdir()
            try:
                extract_zip(part, dest, limits=limits.zip_limits)
            except InvalidInput as exc:
                raise BadRequest(f"upload refused: {exc}") from exc
            part.unlink()
        else:
            part.replace(files_dir / f"{part.name}.dcm")
    parts_dir.rmdir()
    return files_dir


async def receive_upload(request: Request, *, root: Path, limits: UploadLimits) -> ReceivedUpload:
    """Stream the request body to a new upload folder under ``root`` and vet it.

    Parameters
    ----------
    request
        The HTTP request (body not read yet).
    root
        The uploads folder.
    limits
        Size and archive limits.

    Returns
    -------
    ReceivedUpload

    Raises
    ------
    PayloadTooLarge
        The body (or the number of parts) exceeds the limits; nothing is kept.
    BadRequest
        An archive is unsafe or corrupt, or the upload holds no file; nothing is kept.
    UnsupportedMediaType
        The Content-Type is not a zip, DICOM or multipart/form-data.
    """
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    media = ctype.decode("latin-1").lower()
    if media not in _ZIP_TYPES | {"application/dicom", "multipart/form-data"}:
        raise UnsupportedMediaType(
            f"Content-Type {media or '(none)'!r} is not accepted: send application/zip, "
            "application/dicom or multipart/form-data with DICOM or zip files"
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes:
        await _drain(request)
        raise _too_big(limits)

    upload_id = uuid.uuid4().hex
    root.mkdir(parents=True, exist_ok=True)
    partial = root / f"{upload_id}.partial"
    parts_dir = partial / "parts"
    parts_dir.mkdir(parents=True)
    sink = _Sink(parts_dir, limits)
    try:
        multipart: _MultipartSink | None = None
        if media == "multipart/form-data":
            boundary = options.get(b"boundary")
            if not boundary:
                raise BadRequest("multipart/form-data without a boundary")
            multipart = _MultipartSink(sink, boundary)
        else:
            sink.begin()
        async for chunk in request.stream():
            sink.n_bytes += len(chunk)
            if sink.n_bytes > limits.max_bytes:
                sink.abort()
                await _drain(request)
                raise _too_big(limits)
            if multipart is not None:
                await anyio.to_thread.run_sync(multipart.write, chunk)
            else:
                await anyio.to_thread.run_sync(sink.data, chunk)
        if multipart is not None:
            multipart.finalize()
        sink.end()
        if sink.n_parts == 0 or sink.n_bytes == 0:
            raise BadRequest("the upload holds no file")
        files_dir = await anyio.to_thread.run_sync(_unpack, partial, parts_dir, limits)
        # on disk before the 202: an accepted upload survives a power cut
        await anyio.to_thread.run_sync(fsync_tree, partial)
        final = root / upload_id
        partial.replace(final)
        await anyio.to_thread.run_sync(fsync_dir, root)
    except BaseException:
        sink.abort()
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info("upload %s received: %d part(s), %d bytes", upload_id, sink.n_parts, sink.n_bytes)
    return ReceivedUpload(
        upload_id=upload_id,
        folder=final,
        files_dir=final / files_dir.name,
        sha256=sink.digest.hexdigest(),
        n_bytes=sink.n_bytes,
        n_parts=sink.n_parts,
    )
