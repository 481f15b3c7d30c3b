"""Download, verify and unpack a dataset's archive (``url``, ``sha256``, ``size`` of its entry).

The archive is kept in ``<data_root>/downloads``; its size and SHA-256 are checked before anything
is unpacked, every member is checked before anything is written, and a present and verified
archive is never downloaded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import tarfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from cbir.data.images import file_sha256
from cbir.data.manifest import DatasetError
from cbir.data.sources.registry import get_source
from cbir.io import atomic_path, flush_to_disk, is_disk_full

log = logging.getLogger(__name__)

DOWNLOADS = "downloads"  # under data_root
UNPACKED_STAMP = ".cbir-unpacked.json"  # in the dataset folder, once an archive is unpacked there
DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class ArchiveSpec:
    """Where a dataset's archive is downloaded from and what it must be."""

    url: str
    sha256: str
    size: int | None = None

    @property
    def filename(self) -> str:
        name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlparse(self.url).path)).name
        return name or "archive"


def archive_spec(entry: Mapping[str, Any]) -> ArchiveSpec | None:
    """The archive of a dataset entry, or None when no URL is configured."""
    if not entry.get("url"):
        return None
    return ArchiveSpec(str(entry["url"]), str(entry["sha256"]).lower(), entry.get("size"))


def _copy_hashing(source: BinaryIO, target: BinaryIO, limit: int | None, label: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    total = 0
    while chunk := source.read(1 << 20):
        total += len(chunk)
        if limit is not None and total > limit:
            raise DatasetError(f"'{label}' is larger than the expected {limit} bytes; download stopped")
        digest.update(chunk)
        target.write(chunk)
    return digest.hexdigest(), total


def mismatch_message(path: Path, spec: ArchiveSpec, actual_sha256: str, actual_size: int) -> str:
    expected_size = f" ({spec.size} bytes)" if spec.size is not None else ""
    return (
        f"checksum mismatch for '{path}' (from {spec.url}): expected SHA-256 {spec.sha256}{expected_size}, "
        f"got {actual_sha256} ({actual_size} bytes). Nothing was unpacked; check the URL or the configured "
        "sha256/size."
    )


def verify_archive(path: Path, spec: ArchiveSpec) -> bool:
    """True when ``path`` exists with the expected size and SHA-256."""
    if not path.is_file():
        return False
    if spec.size is not None and path.stat().st_size != spec.size:
        return False
    return file_sha256(path) == spec.sha256


def download_archive(spec: ArchiveSpec, target: Path) -> Path:
    """Download ``spec.url`` (http(s), ftp or file://) to ``target``, checking size and SHA-256.

    The file only appears under ``target`` once it has been verified; a mismatch raises
    :class:`DatasetError` naming the file and both digests.
    """
    with atomic_path(target, expected_bytes=spec.size) as partial:
        try:
            with urllib.request.urlopen(spec.url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(partial, "wb") as out:
                digest, size = _copy_hashing(response, out, spec.size, spec.filename)
        except OSError as error:  # URLError is an OSError
            if is_disk_full(error):
                raise
            raise DatasetError(f"cannot download '{spec.filename}' from {spec.url}: {error}") from error
        if digest != spec.sha256 or (spec.size is not None and size != spec.size):
            raise DatasetError(mismatch_message(target, spec, digest, size))
    log.info("downloaded %s (%d bytes, SHA-256 verified) to %s", spec.url, size, target)
    return target


def _name_problem(name: str) -> str | None:
    if not name or name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "absolute path"
    if ".." in re.split(r"[\\/]+", name):
        return "'..' in its path"
    return None


def _link_problem(member: tarfile.TarInfo) -> str | None:
    link = member.linkname
    if not link or link.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", link):
        return f"link to an absolute path ('{link}')"
    base = posixpath.dirname(member.name) if member.issym() else ""
    resolved = posixpath.normpath(posixpath.join(base, link))
    if resolved == ".." or resolved.startswith("../"):
        return f"link pointing outside the target folder ('{link}')"
    return None


def tar_member_problem(member: tarfile.TarInfo, links: set[str]) -> str | None:
    """Why a tar member must not be unpacked (None when it is safe)."""
    problem = _name_problem(member.name)
    if problem:
        return problem
    parts = PurePosixPath(posixpath.normpath(member.name)).parts
    if any(posixpath.join(*parts[:i]) in links for i in range(1, len(parts))):
        return "its path goes through a link in the archive"
    if member.issym() or member.islnk():
        return _link_problem(member)
    if member.isdev():
        return "device file or FIFO"
    return None


def _unsafe(archive: Path, name: str, problem: str) -> DatasetError:
    return DatasetError(f"unsafe member '{name}' in '{archive.name}': {problem}; nothing was unpacked")


def _extract_zip(archive: Path, target: Path) -> int:
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        for name in names:
            if problem := _name_problem(name):
                raise _unsafe(archive, name, problem)
        zf.extractall(target)  # zipfile never creates links: a link member becomes a plain file
    return len(names)


def _extract_tar(archive: Path, target: Path) -> int:
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            links = {posixpath.normpath(m.name) for m in members if m.issym() or m.islnk()}
            for member in members:
                if problem := tar_member_problem(member, links):
                    raise _unsafe(archive, member.name, problem)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: a second, independent check
                tar.extractall(target, members=members, filter="data")
            else:  # pragma: no cover
                tar.extractall(target, members=members)
    except tarfile.TarError as error:
        raise DatasetError(f"cannot unpack '{archive}' (neither a readable tar nor a zip archive): {error}") from error
    return len(members)


def safe_extract(archive: Path, target: Path) -> int:
    """Unpack a tar (any compression) or zip archive into ``target``; return the member count.

    Every member is checked first: absolute paths, '..' components, links pointing outside
    ``target`` (or paths through links) and device files stop it before anything is written.
    """
    archive = Path(archive)
    if zipfile.is_zipfile(archive):
        return _extract_zip(archive, target)
    return _extract_tar(archive, target)


def unpack_archive(archive: Path, target: Path) -> int:
    """Unpack into a scratch folder beside ``target``, then move the top-level entries into it."""
    scratch = target.parent / f".{target.name}.unpacking-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        count = safe_extract(archive, scratch)
        target.mkdir(parents=True, exist_ok=True)
        for entry in sorted(scratch.iterdir()):
            dest = target / entry.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            elif dest.exists() or dest.is_symlink():
                dest.unlink()
            os.replace(entry, dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return count


def _stamp_matches(root: Path, spec: ArchiveSpec) -> bool:
    try:
        stamp = json.loads((root / UNPACKED_STAMP).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return stamp.get("sha256") == spec.sha256


def fetch_dataset(name: str, source: str, entry: Mapping[str, Any], root: Path, downloads: Path) -> dict[str, Any]:
    """Make a dataset with a configured URL present in ``root``; return a record of what was done.

    In order: already unpacked from the verified archive -> nothing to do; archive present in
    ``downloads`` and verified -> unpack it; the dataset's files already in ``root``, put there by
    hand (no stamp of another archive) -> use them, with a warning that they were not verified;
    otherwise download, verify and unpack. A checksum mismatch stops with a message naming the
    file and both digests.
    """
    spec = archive_spec(entry)
    if spec is None:
        raise DatasetError(f"dataset '{name}' has no url to download from")
    root = Path(root)
    record: dict[str, Any] = {"dataset": name, "url": spec.url, "sha256": spec.sha256, "root": str(root)}
    if _stamp_matches(root, spec):
        log.info("dataset '%s': already unpacked in %s from the verified archive", name, root)
        return {**record, "status": "present and verified", "downloaded": False}
    archive = Path(downloads) / spec.filename
    downloaded = False
    if verify_archive(archive, spec):
        log.info("dataset '%s': %s is present and verified; not downloading it again", name, archive)
    elif (
        not (root / UNPACKED_STAMP).exists()
        and not archive.exists()
        and get_source(source).missing_reason(entry, root) is None
    ):
        log.warning(
            "dataset '%s': using the files already in %s; they were not checked against the archive's SHA-256 "
            "(remove the folder to download and verify %s)",
            name,
            root,
            spec.url,
        )
        return {**record, "status": "local files, not verified", "downloaded": False}
    else:
        if archive.exists():
            log.warning("dataset '%s': %s does not match the expected SHA-256; downloading it again", name, archive)
        download_archive(spec, archive)
        downloaded = True
    members = unpack_archive(archive, root)
    stamp = {"archive": archive.name, "url": spec.url, "sha256": spec.sha256, "size": archive.stat().st_size}
    flush_to_disk(root)  # the stamp says the files are complete: they are on the disk before it is
    with atomic_path(root / UNPACKED_STAMP) as tmp:
        tmp.write_text(json.dumps(stamp, indent=2) + "\n")
    log.info("dataset '%s': unpacked %d members of %s into %s", name, members, archive.name, root)
    return {**record, "status": "unpacked", "downloaded": downloaded, "archive": str(archive), "members": members}
