"""Inspecting files for a manifest, in bulk: each file's image facts or why it cannot be used.

Inspecting a file decodes it whole, measures it and hashes it: hours for a large photo collection.
:func:`inspect_images` inspects many files at once, in a process pool, and skips those that a
:class:`FileRecords` cache knows unchanged: same absolute path, size and modification time (the
rule rsync and git use, so a file edited in place keeping both is not noticed). The dataset
sources call it without options; :func:`build_manifest <cbir.data.sources.build_manifest>` sets the
cache and the pool size for the whole build with :func:`scanning`.

A large folder of the user's own files is inspected before the manifest job, by scan jobs of
:func:`scan_shard` each taking a slice of :func:`listed_files`: the manifest job then finds every
file in their records, so a million files are not one job lasting hours. What is no photo
(:mod:`cbir.data.ignore`: videos, sidecars, OS files, hidden folders ...) is never listed there.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import multiprocessing
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import PIL
from PIL import Image

from cbir.data.ignore import current_rules
from cbir.data.images import (
    decoders_stamp,
    displayed_size,
    file_sha256,
    is_utf8_name,
    open_within_pixel_limit,
    unreadable_reason,
)
from cbir.io import atomic_path

log = logging.getLogger(__name__)

FileKey = tuple[str, int, int]  # absolute path as text, size in bytes, st_mtime_ns
RECORD_COLUMNS = ["path", "size", "mtime_ns", "width", "height", "sha256", "reason"]
MAX_CHUNK = 64  # files per task sent to a worker: amortises the round trips, keeps the workers evenly busy


@dataclass(frozen=True)
class ImageFacts:
    """What the manifest records of a usable image: its size as displayed (EXIF orientation applied)."""

    width: int
    height: int
    bytes: int
    sha256: str


Inspection = ImageFacts | str  # a usable image's facts, or the reason the file cannot be used


def inspect_file(path: Path) -> Inspection:
    """Decode, measure and hash one file (what a cache hit saves)."""
    reason = unreadable_reason(path)
    if reason:
        return reason
    with open_within_pixel_limit(path) as image:
        width, height = displayed_size(image)
    return ImageFacts(width, height, path.stat().st_size, file_sha256(path))


def file_key(path: Path) -> FileKey | None:
    """The cache key of a regular file; None (inspected every time, never cached) when it cannot be
    stat'ed or its path is not UTF-8, which the UTF-8 cache file could not hold."""
    text = os.path.abspath(path)
    if not is_utf8_name(text):
        return None
    try:
        status = path.stat()
    except OSError:
        return None
    if not stat.S_ISREG(status.st_mode):
        return None
    return text, status.st_size, status.st_mtime_ns


def records_stamp() -> str:
    """First line of a cache file: what decides an inspection's outcome besides the file itself.

    A cache written under another Pillow, pillow-heif or rawpy (which decide which formats are read) or pixel
    limit is not used.
    """
    return (
        f"# cbir file records v1; Pillow {PIL.__version__}; {decoders_stamp()}; "
        f"MAX_IMAGE_PIXELS {Image.MAX_IMAGE_PIXELS}"
    )


class FileRecords:
    """What inspection found per :data:`FileKey`: ``known`` from the cache file, ``seen`` in this scan.

    Only ``seen`` is written back, so files that are gone drop out of the cache.
    """

    def __init__(self, known: Mapping[FileKey, Inspection] | None = None) -> None:
        self.known: dict[FileKey, Inspection] = dict(known or {})
        self.seen: dict[FileKey, Inspection] = {}
        self.inspected = 0
        self.reused = 0

    @classmethod
    def load(cls, path: str | Path, shards: Sequence[str | Path] = ()) -> FileRecords:
        """The records of a cache file; a missing, unreadable or malformed one is ignored (a warning).

        ``shards``: the records the scan jobs wrote this run (:func:`scan_shard`), taken over the
        cache's; unlike the cache they must be readable (an error names the file).
        """
        path = Path(path)
        known: dict[FileKey, Inspection] = {}
        if not path.exists():
            log.info("no file record cache '%s' yet: every file is inspected", path)
        else:
            try:
                known = read_records(path)
            except (OSError, UnicodeDecodeError, ValueError, csv.Error) as error:
                log.warning("file record cache '%s' ignored, every file is inspected: %s", path, error)
        for shard in shards:
            try:
                known.update(read_records(Path(shard)))
            except (OSError, UnicodeDecodeError, ValueError, csv.Error) as error:
                raise ValueError(f"scan records '{shard}' cannot be read: {error}") from error
        return cls(known)

    def lookup(self, key: FileKey | None) -> Inspection | None:
        if key is None:
            return None
        found = self.seen.get(key)
        if found is None:
            found = self.known.get(key)
        if found is not None:
            self.seen[key] = found
            self.reused += 1
        return found

    def remember(self, key: FileKey | None, inspection: Inspection) -> None:
        self.inspected += 1
        if key is not None:
            self.seen[key] = inspection

    def save(self, path: str | Path) -> None:
        """The records of the files seen in this scan, written atomically."""
        write_records(self.seen, path)

    def summary(self, where: str | Path) -> str:
        return f"{self.inspected} inspected, {self.reused} reused from {where}"


def read_records(path: Path) -> dict[FileKey, Inspection]:
    """A cache file written by :func:`write_records`; ValueError when it is not one, or stale."""
    with open(path, encoding="utf-8", newline="") as f:
        stamp = f.readline().rstrip("\r\n")
        if stamp != records_stamp():
            raise ValueError(f"written by another version ('{stamp[:120]}', expected '{records_stamp()}')")
        reader = csv.reader(f)
        if next(reader, None) != RECORD_COLUMNS:
            raise ValueError(f"the header is not {','.join(RECORD_COLUMNS)}")
        return dict(_parse_record(row, reader.line_num) for row in reader)


def _parse_record(row: list[str], line: int) -> tuple[FileKey, Inspection]:
    if len(row) != len(RECORD_COLUMNS):
        raise ValueError(f"line {line}: {len(row)} fields, expected {len(RECORD_COLUMNS)}")
    path, size, mtime_ns, width, height, sha256, reason = row
    key = (path, int(size), int(mtime_ns))
    if reason and not (width or height or sha256):
        return key, reason
    if reason or len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
        raise ValueError(f"line {line}: neither a reason nor an image's width, height and sha256")
    return key, ImageFacts(int(width), int(height), int(size), sha256)


def write_records(records: Mapping[FileKey, Inspection], path: str | Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(records_stamp() + "\n")
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(RECORD_COLUMNS)
        for (text, size, mtime_ns), inspection in sorted(records.items()):
            if isinstance(inspection, str):
                writer.writerow([text, size, mtime_ns, "", "", "", inspection])
            else:
                writer.writerow([text, size, mtime_ns, inspection.width, inspection.height, inspection.sha256, ""])


@dataclass(frozen=True)
class ScanContext:
    """The cache and the number of worker processes every :func:`inspect_images` call of a build uses."""

    records: FileRecords | None = None
    workers: int = 1


_SCAN: ContextVar[ScanContext | None] = ContextVar("cbir_scan", default=None)  # None: no cache, inline


@contextlib.contextmanager
def scanning(records: FileRecords | None = None, workers: int = 1) -> Iterator[None]:
    """Inside the block, :func:`inspect_images` uses ``records`` and ``workers`` processes."""
    token = _SCAN.set(ScanContext(records, workers))
    try:
        yield
    finally:
        _SCAN.reset(token)


def inspect_images(
    paths: Sequence[Path], *, records: FileRecords | None = None, workers: int | None = None
) -> list[Inspection]:
    """The inspection of each path, in order: from ``records`` where the file is unchanged, else done
    now, by ``workers`` processes. Both default to those :func:`scanning` set (no cache, inline)."""
    context = _SCAN.get() or ScanContext()
    if records is None:
        records = context.records if context.records is not None else FileRecords()
    keys = [file_key(Path(path)) for path in paths]
    outcomes = [records.lookup(key) for key in keys]
    pending = [i for i, outcome in enumerate(outcomes) if outcome is None]
    fresh = _inspect_all([Path(paths[i]) for i in pending], workers or context.workers)
    for i, inspection in zip(pending, fresh, strict=True):
        records.remember(keys[i], inspection)
        outcomes[i] = inspection
    return outcomes  # type: ignore[return-value]  # every None was filled above


def _inspect_all(paths: list[Path], workers: int) -> list[Inspection]:
    workers = min(workers, len(paths))
    if workers <= 1:
        return [inspect_file(path) for path in paths]
    chunksize = max(1, min(MAX_CHUNK, len(paths) // (4 * workers)))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context())
    try:
        return list(pool.map(inspect_file, paths, chunksize=chunksize))
    finally:
        # on an error or SIGTERM, drop the chunks not started rather than wait for the whole scan
        pool.shutdown(wait=True, cancel_futures=True)


def _pool_context() -> multiprocessing.context.BaseContext:
    # rule scripts run their job when imported: spawn and forkserver import __main__ again in
    # each worker, which would run the job there too; fork does not (and starts faster)
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def listed_files(folder: str | Path, ignore: Sequence[str] | None = None) -> Iterator[tuple[str, os.stat_result]]:
    """Every file below ``folder`` to inspect, sorted by folder then name (links to folders followed once), with
    its status (a broken link's own). What :mod:`cbir.data.ignore` ignores (with the ``ignore`` patterns;
    default those of its ``ignoring`` block) is left out: ignored folders are not entered. It reads no
    file, so a million files take seconds."""
    rules = current_rules(ignore)
    seen: set[str] = set()
    for current, folders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:  # a link back into a folder already listed
            folders.clear()
            continue
        seen.add(real)
        inside = Path(os.path.relpath(current, folder))
        folders[:] = sorted(name for name in folders if rules.folder_kind((inside / name).as_posix()) is None)
        kinds = rules.file_kinds(inside.as_posix(), files)  # a RAW beside its JPEG twin is ignored too
        for name in sorted(name for name in files if kinds[name] is None):
            path = os.path.join(current, name)
            try:
                yield path, os.stat(path)
            except OSError:  # a broken link: its name still counts
                yield path, os.lstat(path)


@dataclass(frozen=True)
class FolderState:
    """What a listing of a folder says without reading a file: a digest of the names, sizes and
    modification times (what changes when a file is added, removed, renamed or edited) and the count."""

    digest: str
    n_files: int


def folder_state(folder: str | Path, ignore: Sequence[str] | None = None) -> FolderState:
    """The state of the files to inspect (:func:`listed_files`): a change to an ignored file alone changes nothing."""
    digest = hashlib.sha256()
    n_files = 0
    for path, info in listed_files(folder, ignore):
        digest.update(os.fsencode(f"{os.path.relpath(path, folder)}\0{info.st_size}\0{info.st_mtime_ns}\n"))
        n_files += 1
    return FolderState(digest.hexdigest(), n_files)


def scan_shard_count(n_files: int, shard_size: int) -> int:
    """Scan jobs for a folder of ``n_files``: none (the manifest job inspects them) when one would do."""
    shards = -(-n_files // shard_size)
    return shards if shards > 1 else 0


def shard_of(paths: Sequence[str], shard: int, n_shards: int) -> Sequence[str]:
    """The ``shard``-th of ``n_shards`` contiguous, near-equal slices of ``paths``."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is not one of 0..{n_shards - 1}")
    return paths[len(paths) * shard // n_shards : len(paths) * (shard + 1) // n_shards]


def scan_shard(
    folder: str | Path,
    shard: int,
    n_shards: int,
    cache: str | Path,
    out: str | Path,
    workers: int = 1,
    ignore: Sequence[str] | None = None,
) -> FileRecords:
    """Inspect one shard of the files below ``folder`` (listed as :func:`listed_files` lists them, ``ignore``:
    the ``data.ignore`` patterns) into the records file ``out``, which the manifest job then takes its
    inspections from. Unchanged files are taken from the ``cache`` the last manifest job wrote, so a
    rescan mostly stats."""
    paths = shard_of([path for path, _ in listed_files(folder, ignore)], shard, n_shards)
    records = FileRecords.load(cache)
    inspect_images([Path(path) for path in paths], records=records, workers=workers)
    records.save(out)
    return records
