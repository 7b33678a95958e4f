"""Input discovery: find the DICOM files of a folder (any depth) or a zip archive.

Only headers are read here (``dcmread(stop_before_pixels=True)``), in a thread pool; pixel
data is decoded later, for the one chosen series only (:mod:`ct_triage.dicom_bridge.load`).

A file is recognised as DICOM by the Part 10 signature (128-byte preamble followed by
``DICM``, PS3.10 section 7.1). Files without the signature are accepted only when they start
with a group 0x0002/0x0008 tag, as legacy "raw dataset" files do, and parse as a dataset with
a SOP Class UID. Everything else (README, thumbnails, DICOMDIR media directories, ...) is
skipped and counted.

The same instance found twice (the same SOP Instance UID in two files, as when a study is
exported twice into one folder) is read once when the files are byte-identical; two
*different* files with one SOP Instance UID cannot both be right, and the input is declined.

Zip archives are untrusted input: entries are extracted into a caller-given folder after
checks against zip-slip (absolute names, ``..``), symbolic links, encryption, entry count,
total uncompressed size and compression ratio (zip bombs). Each violation raises
:class:`~ct_triage.models.errors.InvalidInput`. Entries whose names clash are all kept:
a repeated name (or a file named like a folder of the archive) is extracted under a new
name (``name~2``); byte-identical repeats are extracted once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ct_triage.models.errors import InvalidInput

__all__ = [
    "DicomHeader",
    "DiscoveredInput",
    "UnreadableFile",
    "ZipLimits",
    "discover",
    "drop_duplicate_instances",
    "extract_zip",
    "read_headers",
]

logger = logging.getLogger(__name__)

#: Media Storage Directory Storage (DICOMDIR), PS3.10 section 8; not an image.
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_DICM_OFFSET = 128
_LEGACY_FIRST_GROUPS = (b"\x02\x00", b"\x08\x00")
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class DicomHeader:
    """One DICOM file whose header was read.

    Parameters
    ----------
    path
        The file.
    dataset
        Its data set, read with ``stop_before_pixels=True`` (no PixelData).
    """

    path: Path
    dataset: Dataset


@dataclass(frozen=True, slots=True)
class UnreadableFile:
    """A file that looks like DICOM (Part 10 signature) but whose header cannot be parsed."""

    path: Path
    reason: str


@dataclass(frozen=True, slots=True)
class DiscoveredInput:
    """What :func:`discover` found.

    Parameters
    ----------
    root
        The folder that was scanned (the extraction folder for a zip).
    headers
        Readable DICOM files, sorted by path.
    unreadable
        DICOM files whose header could not be parsed, with the reason.
    non_dicom_count
        Files skipped because they are not DICOM (or are a DICOMDIR).
    """

    root: Path
    headers: tuple[DicomHeader, ...]
    unreadable: tuple[UnreadableFile, ...]
    non_dicom_count: int


@dataclass(frozen=True, slots=True)
class ZipLimits:
    """Limits applied to an untrusted zip archive before and during extraction.

    Parameters
    ----------
    max_entries
        Most entries (files and folders) accepted.
    max_total_bytes
        Most uncompressed bytes in total (declared sizes, and enforced while copying).
    max_ratio
        Largest uncompressed/compressed ratio of one entry (or of the whole archive).
        Real CT compresses about 2-5x (deflate); 100x only happens for crafted data.
    ratio_min_bytes
        Entries smaller than this are exempt from the ratio check (a tiny text file of
        spaces may legitimately compress very well).
    """

    max_entries: int = 50_000
    max_total_bytes: int = 8 * 1024**3
    max_ratio: float = 100.0
    ratio_min_bytes: int = 1024**2


def _safe_member_path(name: str, zip_name: str) -> PurePosixPath:
    """Validate a zip member name against zip-slip; return it as a relative posix path."""
    normalised = name.replace("\\", "/")
    posix = PurePosixPath(normalised)
    if (
        normalised.startswith("/")
        or posix.is_absolute()
        or (len(normalised) > 1 and normalised[1] == ":")
        or ".." in posix.parts
    ):
        raise InvalidInput(
            f"Unsafe zip archive {zip_name}: entry {name!r} points outside the archive folder"
        )
    return posix


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    mode = (info.external_attr >> 16) & 0xFFFF
    return info.create_system == 3 and stat.S_ISLNK(mode)


def extract_zip(zip_path: Path, dest: Path, *, limits: ZipLimits | None = None) -> Path:
    """Safely extract an untrusted zip archive into ``dest``.

    Parameters
    ----------
    zip_path
        The archive.
    dest
        An existing (preferably empty) folder the caller owns, e.g. a job's temp folder.
    limits
        Size and count limits; defaults to :class:`ZipLimits`.

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    InvalidInput
        The file is not a zip, or an entry is unsafe (absolute or ``..`` path, symbolic
        link, encrypted) or the archive exceeds a limit (zip bomb).
    """
    lim = limits or ZipLimits()
    name = zip_path.name
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidInput(f"{name} is not a readable zip archive: {exc}") from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > lim.max_entries:
            raise InvalidInput(
                f"Zip archive {name} has {len(infos)} entries (limit {lim.max_entries})"
            )
        total_declared = 0
        total_compressed = 0
        plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        for info in infos:
            rel = _safe_member_path(info.filename, name)
            if _is_symlink(info):
                raise InvalidInput(f"Unsafe zip archive {name}: entry {info.filename!r} is a link")
            if info.flag_bits & 0x1:
                raise InvalidInput(f"Zip archive {name} is encrypted ({info.filename!r})")
            if info.is_dir():
                continue
            total_declared += info.file_size
            total_compressed += info.compress_size
            if info.file_size >= lim.ratio_min_bytes and info.file_size > lim.max_ratio * max(
                info.compress_size, 1
            ):
                raise InvalidInput(
                    f"Zip archive {name} looks like a zip bomb: entry {info.filename!r} "
                    f"expands {info.file_size / max(info.compress_size, 1):.0f}x "
                    f"(limit {lim.max_ratio:.0f}x)"
                )
            plan.append((info, rel))
        if total_declared > lim.max_total_bytes:
            raise InvalidInput(
                f"Zip archive {name} expands to {total_declared / 1024**2:.0f} MiB "
                f"(limit {lim.max_total_bytes / 1024**2:.0f} MiB)"
            )
        if total_declared >= lim.ratio_min_bytes and total_declared > lim.max_ratio * max(
            total_compressed, 1
        ):
            raise InvalidInput(
                f"Zip archive {name} looks like a zip bomb: it expands "
                f"{total_declared / max(total_compressed, 1):.0f}x (limit {lim.max_ratio:.0f}x)"
            )
        plan = _unclash(plan, infos, name)
        dest_resolved = dest.resolve()
        try:
            written = _extract_planned(archive, plan, dest_resolved, name, lim)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            raise InvalidInput(f"Zip archive {name} is corrupt or unsupported: {exc}") from exc
    logger.info("extracted %d entries (%d bytes) from zip archive %s", len(plan), written, name)
    return dest


def _unclash(
    plan: Sequence[tuple[zipfile.ZipInfo, PurePosixPath]],
    infos: Sequence[zipfile.ZipInfo],
    zip_name: str,
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Give every file entry its own path: none overwrites another, none blocks a folder.

    A repeated name with the same size and CRC-32 as an entry already planned is skipped
    (the same file added twice); any other clash (a repeated name with other content, or a
    file named like a folder of the archive) is extracted as ``name~N``.
    """
    folders: set[PurePosixPath] = set()
    for info in infos:
        rel = PurePosixPath(info.filename.replace("\\", "/"))
        folders.update(rel.parents if not info.is_dir() else (rel, *rel.parents))
    taken: dict[PurePosixPath, zipfile.ZipInfo] = {}
    out: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    renamed = skipped = 0
    for info, rel in plan:
        earlier = taken.get(rel)
        if earlier is not None and (earlier.CRC, earlier.file_size) == (
            info.CRC,
            info.file_size,
        ):
            skipped += 1
            continue
        target = rel
        n = 1
        while target in taken or target in folders:
            n += 1
            target = rel.with_name(f"{rel.name}~{n}")
        if target != rel:
            renamed += 1
        taken[target] = info
        out.append((info, target))
    if renamed or skipped:
        logger.warning(
            "zip archive %s: %d entr(ies) with a clashing name extracted under a new name, "
            "%d repeated identical entr(ies) skipped",
            zip_name,
            renamed,
            skipped,
        )
    return out


def _extract_planned(
    archive: zipfile.ZipFile,
    plan: Sequence[tuple[zipfile.ZipInfo, PurePosixPath]],
    dest_resolved: Path,
    name: str,
    lim: ZipLimits,
) -> int:
    """Copy the vetted entries, counting inflated bytes; return the total written."""
    written = 0
    for info, rel in plan:
        target = dest_resolved.joinpath(*rel.parts)
        if not target.resolve().is_relative_to(dest_resolved):
            raise InvalidInput(
                f"Unsafe zip archive {name}: entry {info.filename!r} points outside "
                "the archive folder"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        # Declared sizes can lie: count the bytes actually inflated.
        entry_written = 0
        with archive.open(info) as src, target.open("wb") as dst:
            while chunk := src.read(_COPY_CHUNK):
                entry_written += len(chunk)
                written += len(chunk)
                if entry_written > info.file_size or written > lim.max_total_bytes:
                    raise InvalidInput(
                        f"Zip archive {name} looks like a zip bomb: entry "
                        f"{info.filename!r} inflates beyond its declared size or the "
                        f"{lim.max_total_bytes / 1024**2:.0f} MiB limit"
                    )
                dst.write(chunk)
    return written


def _iter_files(root: Path) -> Iterable[Path]:
    """All regular files under ``root`` (symbolic links are not followed)."""
    for dirpath, _dirnames, filenames in os.walk(root, followlinks=False):
        for filename in filenames:
            path = Path(dirpath) / filename
            if path.is_file() and not path.is_symlink():
                yield path


def _has_part10_signature(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(_DICM_OFFSET + 4)
    except OSError:
        return False
    return head[_DICM_OFFSET:] == b"DICM"


def _read_one(path: Path) -> DicomHeader | UnreadableFile | None:
    """Read one header; ``None`` when the file is not DICOM."""
    try:
        with path.open("rb") as fh:
            head = fh.read(_DICM_OFFSET + 4)
    except OSError as exc:
        return UnreadableFile(path, f"cannot open: {exc.strerror or exc}")
    has_signature = head[_DICM_OFFSET : _DICM_OFFSET + 4] == b"DICM"
    if not has_signature and head[:2] not in _LEGACY_FIRST_GROUPS:
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=not has_signature)
    except InvalidDicomError as exc:
        if not has_signature:
            return None
        return UnreadableFile(path, f"invalid DICOM header: {exc}")
    except Exception as exc:  # pydicom raises many types on corrupt headers
        if not has_signature:
            return None
        return UnreadableFile(path, f"corrupt DICOM header ({type(exc).__name__}: {exc})")
    if len(ds) == 0:
        if not has_signature:
            return None
        return UnreadableFile(path, "no data set after the file meta information (truncated?)")
    meta = getattr(ds, "file_meta", None)
    sop_class = str(
        ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else "")
    )
    if sop_class == _MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        return None
    if not has_signature and not sop_class:
        return None
    return DicomHeader(path, ds)


def _sop_instance_uid(ds: Dataset) -> str:
    uid = str(ds.get("SOPInstanceUID", "") or "").strip()
    if not uid:
        meta = getattr(ds, "file_meta", None)
        uid = str(meta.get("MediaStorageSOPInstanceUID", "") or "").strip() if meta else ""
    return uid


def _digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_COPY_CHUNK):
            h.update(chunk)
    return h.digest()


def drop_duplicate_instances(headers: Sequence[DicomHeader]) -> tuple[DicomHeader, ...]:
    """Keep one file of each SOP Instance UID (PS3.3 C.12.1: it identifies one instance).

    Byte-identical copies are the same instance sent twice: the first by path is kept and
    the others are dropped (logged). Only files that share a UID are read again (hashed).

    Raises
    ------
    InvalidInput
        Two files carry the same SOP Instance UID but differ: which one is right cannot be
        told, so the input is declined.
    """
    by_uid: dict[str, list[DicomHeader]] = {}
    for header in headers:
        uid = _sop_instance_uid(header.dataset)
        if uid:
            by_uid.setdefault(uid, []).append(header)
    dropped: set[Path] = set()
    for group in by_uid.values():
        if len(group) < 2:
            continue
        try:
            digests = {_digest(h.path) for h in group}
        except OSError as exc:
            raise InvalidInput(f"Cannot read {group[0].path.name}: {exc.strerror or exc}") from exc
        if len(digests) > 1:
            raise InvalidInput(
                f"{len(group)} different files carry the same SOPInstanceUID "
                f"({group[0].path.name} and {group[1].path.name}): one image in two versions; "
                "remove the wrong copy and resend"
            )
        dropped.update(h.path for h in group[1:])
    if not dropped:
        return tuple(headers)
    logger.info(
        "ignored %d exact duplicate file(s) (same SOPInstanceUID, same bytes)", len(dropped)
    )
    return tuple(h for h in headers if h.path not in dropped)


def read_headers(
    paths: Sequence[Path], *, root: Path, max_workers: int | None = None
) -> DiscoveredInput:
    """Read the headers of ``paths`` in a thread pool and sort them into the three outcomes.

    Parameters
    ----------
    paths
        Candidate files.
    root
        Recorded as :attr:`DiscoveredInput.root`.
    max_workers
        Threads; default ``min(16, cpu_count + 4)``.

    Returns
    -------
    DiscoveredInput
    """
    workers = max_workers or min(16, (os.cpu_count() or 1) + 4)
    ordered = sorted(paths)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dcm-header") as pool:
        results = list(pool.map(_read_one, ordered))
    headers = tuple(r for r in results if isinstance(r, DicomHeader))
    unreadable = tuple(r for r in results if isinstance(r, UnreadableFile))
    non_dicom = sum(1 for r in results if r is None)
    if non_dicom:
        logger.info("skipped %d non-DICOM file(s) under %s", non_dicom, root)
    for bad in unreadable:
        logger.warning("unreadable DICOM file %s: %s", bad.path.name, bad.reason)
    return DiscoveredInput(root, headers, unreadable, non_dicom)


def discover(
    input_path: Path,
    *,
    work_dir: Path | None = None,
    max_workers: int | None = None,
    zip_limits: ZipLimits | None = None,
) -> DiscoveredInput:
    """Find and read the DICOM headers of a folder (any depth) or a zip archive.

    Parameters
    ----------
    input_path
        A folder, a zip archive or a single DICOM file.
    work_dir
        Required for a zip: an empty folder (owned by the caller, who deletes it) to
        extract into.
    max_workers
        Threads used to read headers.
    zip_limits
        Limits for zip archives.

    Returns
    -------
    DiscoveredInput

    Raises
    ------
    InvalidInput
        The input does not exist, is an unsafe archive, or holds no readable DICOM file,
        or two different files carry one SOP Instance UID (byte-identical copies are read
        once, see :func:`drop_duplicate_instances`).
    """
    if not input_path.exists():
        raise InvalidInput(f"Input {input_path} does not exist")
    if (
        input_path.is_file()
        and not _has_part10_signature(input_path)
        and zipfile.is_zipfile(input_path)
    ):
        if work_dir is None:
            raise ValueError("discover() needs work_dir to extract a zip archive")
        work_dir.mkdir(parents=True, exist_ok=True)
        root = extract_zip(input_path, work_dir, limits=zip_limits)
        files = list(_iter_files(root))
    elif input_path.is_file():
        root = input_path.parent
        files = [input_path]
    else:
        root = input_path
        files = list(_iter_files(root))
    found = read_headers(files, root=root, max_workers=max_workers)
    unique = drop_duplicate_instances(found.headers)
    if len(unique) != len(found.headers):
        found = DiscoveredInput(found.root, unique, found.unreadable, found.non_dicom_count)
    if not found.headers:
        detail = ""
        if found.unreadable:
            first = found.unreadable[0]
            detail = (
                f" ({len(found.unreadable)} unreadable DICOM file(s), e.g. "
                f"{first.path.name}: {first.reason})"
            )
        raise InvalidInput(f"No DICOM files found in {input_path.name or input_path}{detail}")
    logger.info(
        "found %d DICOM file(s), %d unreadable, %d non-DICOM under %s",
        len(found.headers),
        len(found.unreadable),
        found.non_dicom_count,
        input_path.name,
    )
    return found
