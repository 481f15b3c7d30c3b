"""The paper's datasets: where each comes from, how it is fetched and checked, and its adapter.

Every adapter ends in the same :class:`cbir.data.Manifest` as an image folder (``id``, ``path``,
``label``, ``class_name``, ``width``, ``height``, ``bytes``, ``sha256`` of each image, and the
``excluded`` table), with the class mapping of the literature. Two add columns:
``official_subset`` (``train``/``test`` of the dataset's own split: CIFAR-10, VOC 2012) and
``labels`` (VOC 2012's full label set, '|'-joined class names).

Sources (``datasets.<name>.source`` in the config):

- ``folder``: any image folder, one sub-folder per class;
- ``sklearn_digits``: scikit-learn's bundled digits, written out as such a folder;
- ``corel1k``: Corel-1K ("Wang"), ``0.jpg`` … ``999.jpg``, class = index // 100 in the order
  of :data:`COREL1K_CLASSES`, or the re-packaging with one folder per class;
- ``corel10k`` (100 × 100) and ``ghim10k`` (20 × 500): one folder per class, or a flat folder
  of numbered files with class = index // images-per-class;
- ``cifar10``: the official python-pickle batches, read with a restricted unpickler and written
  out as PNG files, one folder per class;
- ``voc2012``: the official VOCdevkit tree; the label is the class with the largest total
  bounding-box area in the image.

A dataset with a configured ``url`` is downloaded into ``<data_root>/downloads``, its size and
SHA-256 are checked before anything is unpacked, and it is unpacked (members checked) into the
dataset's folder once; a present and verified archive is never downloaded again.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import logging
import os
import pickle
import posixpath
import re
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
from PIL import Image

from cbir.data import (
    EXCLUDED_COLUMNS,
    MANIFEST_COLUMNS,
    DatasetError,
    Manifest,
    file_sha256,
    image_row,
    scan_image_folder,
    unreadable_reason,
)

log = logging.getLogger(__name__)

FOLDER = "folder"
DIGITS = "sklearn_digits"
INDEXED_SOURCES = ("corel1k", "corel10k", "ghim10k")
CIFAR10 = "cifar10"
VOC2012 = "voc2012"
SOURCES = (FOLDER, DIGITS, *INDEXED_SOURCES, CIFAR10, VOC2012)
OFFICIAL_SPLIT_SOURCES = (CIFAR10, VOC2012)
LAYOUTS = ("auto", "folders", "flat")

COREL1K_CLASSES = (
    "africans", "beaches", "buildings", "buses", "dinosaurs",
    "elephants", "flowers", "horses", "mountains", "food",
)  # fmt: skip
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

FETCH_KEYS = frozenset({"url", "sha256", "size"})
COMMON_KEYS = frozenset({"source", "how_to_get"})
SOURCE_KEYS: dict[str, frozenset[str]] = {
    FOLDER: frozenset({"path", "subdir"}) | FETCH_KEYS,
    DIGITS: frozenset({"image_size"}),
    **{
        source: frozenset({"path", "subdir", "layout", "images_per_class", "n_classes", "first_index"}) | FETCH_KEYS
        for source in INDEXED_SOURCES
    },
    CIFAR10: frozenset({"path", "subdir"}) | FETCH_KEYS,
    VOC2012: frozenset({"path", "subdir"}) | FETCH_KEYS,
}

DOWNLOADS = "downloads"  # under data_root
UNPACKED_STAMP = ".cbir-unpacked.json"  # in the dataset folder, once an archive is unpacked there
CIFAR_EXPORT_REPORT = "export.json"  # in the PNG folder written from the CIFAR-10 batches
DOWNLOAD_TIMEOUT_S = 60
INDEX_NAME = re.compile(r"(\d+)\.[A-Za-z0-9]+")
SAFE_CLASS_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_ .-]*")

HOW_TO_PROVIDE = {
    FOLDER: "put its images there as one sub-folder per class",
    "corel1k": "put the 1000 JPEGs there, either flat (0.jpg … 999.jpg) or one sub-folder per class",
    "corel10k": "put the images there, one sub-folder per class or flat numbered files (layout: flat)",
    "ghim10k": "put the images there, one sub-folder per class or flat numbered files (layout: flat)",
    CIFAR10: "unpack cifar-10-python.tar.gz there (it holds cifar-10-batches-py/)",
    VOC2012: "unpack VOCtrainval_11-May-2012.tar there (it holds VOCdevkit/VOC2012/)",
}


@dataclass(frozen=True)
class IndexedSpec:
    """Class structure of a dataset whose files may be numbered: class = index // images_per_class."""

    n_classes: int
    images_per_class: int
    class_names: tuple[str, ...] | None = None

    def name(self, label: int) -> str:
        if self.class_names:
            return self.class_names[label]
        return f"{label:0{len(str(self.n_classes - 1))}d}"


INDEXED_DEFAULTS = {
    "corel1k": IndexedSpec(10, 100, COREL1K_CLASSES),
    "corel10k": IndexedSpec(100, 100),
    "ghim10k": IndexedSpec(20, 500),
}


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


class UnsafePickleError(DatasetError):
    """A pickle asks for something other than plain containers and numpy arrays."""


# --- configuration helpers -----------------------------------------------------------------


def archive_spec(entry: Mapping[str, Any]) -> ArchiveSpec | None:
    """The archive of a dataset entry, or None when no URL is configured."""
    if not entry.get("url"):
        return None
    return ArchiveSpec(str(entry["url"]), str(entry["sha256"]).lower(), entry.get("size"))


def indexed_spec(source: str, entry: Mapping[str, Any]) -> IndexedSpec:
    """The class structure of a Corel/GHIM dataset, with the config's overrides."""
    default = INDEXED_DEFAULTS[source]
    n_classes = int(entry.get("n_classes", default.n_classes))
    names = default.class_names if default.class_names and n_classes == default.n_classes else None
    return IndexedSpec(n_classes, int(entry.get("images_per_class", default.images_per_class)), names)


def data_dir(root: Path, entry: Mapping[str, Any]) -> Path:
    """The folder inside the dataset folder that holds the files (``subdir``, e.g. an archive's top folder)."""
    return Path(root) / str(entry.get("subdir") or "")


def entry_problems(name: str, entry: Mapping[str, Any]) -> list[str]:
    """Keys that do not belong to the entry's source, and missing companions (sha256 of a url)."""
    source = entry["source"]
    problems = []
    extra = sorted(set(entry) - SOURCE_KEYS[source] - COMMON_KEYS)
    if extra:
        allowed = ", ".join(sorted(SOURCE_KEYS[source] | COMMON_KEYS))
        problems.append(
            f"config key 'datasets.{name}': {', '.join(extra)} not used by source '{source}' (allowed: {allowed})"
        )
    if entry.get("url") and not entry.get("sha256"):
        problems.append(
            f"config key 'datasets.{name}.sha256': required when url is set (the archive's SHA-256, "
            "checked before anything is unpacked)"
        )
    subdir = PurePosixPath(str(entry.get("subdir") or ""))
    if subdir.is_absolute() or ".." in subdir.parts:
        problems.append(f"config key 'datasets.{name}.subdir': must be a relative path inside the dataset folder")
    return problems


def missing_reason(source: str, entry: Mapping[str, Any], root: Path) -> str | None:
    """Why the local files of a dataset cannot be used as they are (None when they can)."""
    folder = data_dir(root, entry)
    if source in (FOLDER, *INDEXED_SOURCES):
        if not folder.is_dir():
            return f"'{folder}' does not exist"
        if source != FOLDER and not any(not p.name.startswith(".") for p in folder.iterdir()):
            return f"'{folder}' is empty"
        return None
    if source == CIFAR10:
        return None if find_cifar_batches(folder) else f"no CIFAR-10 python batches under '{folder}'"
    if source == VOC2012:
        return None if find_voc(folder) else f"no VOC2012 tree (Annotations/, JPEGImages/) under '{folder}'"
    return None


def how_to_provide(name: str, source: str) -> str:
    """Instructions shown for a missing dataset."""
    where = HOW_TO_PROVIDE.get(source, "")
    return (
        f"{where}, or set datasets.{name}.path (or data_root) to where it is, or datasets.{name}.url "
        "with its sha256 to download it"
    )


# --- download, verify, unpack --------------------------------------------------------------


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
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        try:
            with urllib.request.urlopen(spec.url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(partial, "wb") as out:
                digest, size = _copy_hashing(response, out, spec.size, spec.filename)
        except OSError as error:  # URLError is an OSError
            raise DatasetError(f"cannot download '{spec.filename}' from {spec.url}: {error}") from error
        if digest != spec.sha256 or (spec.size is not None and size != spec.size):
            raise DatasetError(mismatch_message(target, spec, digest, size))
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
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
    elif not (root / UNPACKED_STAMP).exists() and not archive.exists() and missing_reason(source, entry, root) is None:
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
    (root / UNPACKED_STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    log.info("dataset '%s': unpacked %d members of %s into %s", name, members, archive.name, root)
    return {**record, "status": "unpacked", "downloaded": downloaded, "archive": str(archive), "members": members}


# --- manifest pieces -----------------------------------------------------------------------


def natural_key(name: str) -> list[Any]:
    """Sort key putting '2' before '10'."""
    return [(0, int(part)) if part.isdigit() else (1, part.lower()) for part in re.split(r"(\d+)", name)]


def image_record(path: Path, image_id: str, label: int, class_name: str) -> dict[str, Any] | str:
    """The manifest row of one image, or the reason it cannot be used."""
    if not path.is_file():
        return "file is missing"
    reason = unreadable_reason(path)
    if reason:
        return reason
    return image_row(path, image_id, label, class_name)


def make_manifest(
    rows: list[dict[str, Any]], excluded: list[dict[str, Any]], classes: Sequence[str], extra: Sequence[str] = ()
) -> Manifest:
    return Manifest(
        images=pd.DataFrame(rows, columns=[*MANIFEST_COLUMNS, *extra]),
        excluded=pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS),
        classes=list(classes),
    )


def relabel(manifest: Manifest, mapping: Mapping[str, int], classes: Sequence[str]) -> Manifest:
    """Replace the folder-order labels by a fixed class order; ``mapping`` maps folder -> label."""
    images = manifest.images.copy()
    folders = images["class_name"]
    images["label"] = folders.map(mapping).astype(int)
    images["class_name"] = images["label"].map(lambda label: classes[label])
    excluded = manifest.excluded.copy()
    excluded["class_name"] = [
        classes[mapping[name]] if name in mapping else name for name in excluded["class_name"]
    ]  # fmt: skip
    return Manifest(images=images, excluded=excluded, classes=list(classes))


def check_class_counts(
    images: pd.DataFrame, classes: Sequence[str], expected: int | None, n_classes: int | None = None
) -> list[str]:
    """Warn (and return the messages) for each class whose image count differs from ``expected``."""
    counts = images["class_name"].value_counts()
    problems = []
    if n_classes is not None and len(classes) != n_classes:
        problems.append(f"{len(classes)} classes found, expected {n_classes}")
    if expected:
        for name in classes:
            have = int(counts.get(name, 0))
            if have != expected:
                problems.append(f"class '{name}' has {have} images, expected {expected}")
    for problem in problems:
        warnings.warn(problem, stacklevel=2)
    return problems


# --- Corel-1K, Corel-10K, GHIM-10K ---------------------------------------------------------


def _image_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if not p.name.startswith(".") and not p.is_dir()]
    return sorted(files, key=lambda p: natural_key(p.name))


def resolve_layout(folder: Path, layout: str) -> str:
    """``auto`` -> ``flat`` when the folder holds numbered files directly, else ``folders``.

    A stray file beside the class folders (a README, SOURCE.txt) does not make it flat.
    """
    if layout != "auto":
        return layout
    return "flat" if any(INDEX_NAME.fullmatch(p.name) for p in _image_files(folder)) else "folders"


def flat_indexed_manifest(folder: Path, spec: IndexedSpec, first_index: int = 0) -> Manifest:
    """Numbered files in one folder: class = (index - first_index) // images_per_class."""
    total = spec.n_classes * spec.images_per_class
    rows: list[dict[str, Any]] = []
    excluded: list[dict[str, Any]] = []
    seen: dict[int, str] = {}
    for path in _image_files(folder):
        match = INDEX_NAME.fullmatch(path.name)
        if not match:
            excluded.append({"path": str(path), "class_name": "", "reason": "file name is not an index (<n>.jpg)"})
            continue
        index = int(match[1]) - first_index
        if not 0 <= index < total:
            reason = (
                f"index {match[1]} outside {first_index}..{first_index + total - 1} "
                f"({spec.n_classes} classes x {spec.images_per_class})"
            )
            excluded.append({"path": str(path), "class_name": "", "reason": reason})
            continue
        label = index // spec.images_per_class
        if index in seen:
            reason = f"duplicate index {match[1]} (also '{seen[index]}')"
            excluded.append({"path": str(path), "class_name": spec.name(label), "reason": reason})
            continue
        record = image_record(path, path.name, label, spec.name(label))
        if isinstance(record, str):
            excluded.append({"path": str(path), "class_name": spec.name(label), "reason": record})
            continue
        seen[index] = path.name
        rows.append(record)
    return make_manifest(rows, excluded, [spec.name(label) for label in range(spec.n_classes)])


def _named_class_mapping(folders: Iterable[str], names: Sequence[str], folder: Path) -> dict[str, int]:
    """Folder name -> label for datasets whose class order is fixed (a name or the class number)."""
    mapping = {}
    lower = [n.lower() for n in names]
    for name in folders:
        if name.lower() in lower:
            mapping[name] = lower.index(name.lower())
        elif name.isdigit() and int(name) < len(names):
            mapping[name] = int(name)
        else:
            raise DatasetError(
                f"folder '{name}' in '{folder}' is not one of the classes {', '.join(names)} (or 0..{len(names) - 1})"
            )
    return mapping


def folders_indexed_manifest(folder: Path, spec: IndexedSpec) -> Manifest:
    """One sub-folder per class: known class names keep the literature's order, others natural order."""
    manifest = scan_image_folder(folder)
    if spec.class_names:
        mapping = _named_class_mapping(manifest.classes, spec.class_names, folder)
        manifest = relabel(manifest, mapping, spec.class_names)
        _check_index_agrees(manifest.images, spec)
        return manifest
    ordered = sorted(manifest.classes, key=natural_key)
    return relabel(manifest, {name: label for label, name in enumerate(ordered)}, ordered)


def _check_index_agrees(images: pd.DataFrame, spec: IndexedSpec) -> None:
    """Warn when numbered files sit in another class's folder than their index says."""
    stems = images["id"].map(lambda i: PurePosixPath(i).stem)
    numbered = stems.str.fullmatch(r"\d+")
    by_index = stems[numbered].astype(int) // spec.images_per_class
    disagree = images.loc[numbered][by_index.to_numpy() != images.loc[numbered, "label"].to_numpy()]
    if len(disagree):
        warnings.warn(
            f"{len(disagree)} file(s) sit in another class folder than their index says, "
            f"e.g. '{disagree['id'].iloc[0]}'; the folder was used",
            stacklevel=2,
        )


def indexed_manifest(source: str, entry: Mapping[str, Any], root: Path) -> Manifest:
    """Corel-1K, Corel-10K or GHIM-10K in either layout, with the per-class counts checked."""
    spec = indexed_spec(source, entry)
    folder = data_dir(root, entry)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder '{folder}' does not exist or is not a folder")
    layout = resolve_layout(folder, str(entry.get("layout", "auto")))
    if layout == "flat":
        manifest = flat_indexed_manifest(folder, spec, int(entry.get("first_index", 0)))
    else:
        manifest = folders_indexed_manifest(folder, spec)
    check_class_counts(manifest.images, manifest.classes, spec.images_per_class, spec.n_classes)
    return manifest


# --- CIFAR-10 ------------------------------------------------------------------------------


def _numpy_core(module: str, name: str) -> Callable[..., Any]:
    for prefix in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{prefix}.{module}"), name)
        except ImportError:
            continue
    raise UnsafePickleError(f"numpy has no {module}.{name}")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding.lower().replace("-", "") != "latin1":
        raise UnsafePickleError(f"bytes encoded as '{encoding}' are not allowed in a CIFAR-10 batch")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("builtins", "dict"): lambda: dict,
    ("builtins", "list"): lambda: list,
    ("builtins", "bytes"): lambda: bytes,
    ("builtins", "str"): lambda: str,
    ("builtins", "bytearray"): lambda: bytearray,
    ("__builtin__", "dict"): lambda: dict,
    ("__builtin__", "list"): lambda: list,
    ("_codecs", "encode"): lambda: _latin1_encode,  # bytes in protocol-2 pickles written by Python 3
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_core("multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_core("multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_core("numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_core("numeric", "_frombuffer"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only dicts, lists, bytes, str and numpy arrays; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        resolve = _ALLOWED_GLOBALS.get((module, name))
        if resolve is None:
            raise UnsafePickleError(f"refusing to load '{module}.{name}': a CIFAR-10 batch holds only arrays and lists")
        return resolve()

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("persistent ids are not allowed in a CIFAR-10 batch")


def restricted_load(path: Path) -> Any:
    """Read a pickle file with :class:`RestrictedUnpickler` (Python 2 strings kept as bytes)."""
    data = Path(path).read_bytes()
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


def _get(batch: Mapping[Any, Any], key: str) -> Any:
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise DatasetError(f"no '{key}' entry")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_cifar_batch(path: Path, n_classes: int = 10) -> tuple[np.ndarray, list[int]]:
    """Images (N x 32 x 32 x 3, uint8) and labels of one CIFAR-10 python batch."""
    batch = restricted_load(path)
    if not isinstance(batch, dict):
        raise DatasetError(f"not a CIFAR-10 batch (a {type(batch).__name__}, not a dict)")
    data = _get(batch, "data")
    labels = list(_get(batch, "labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError("'data' is not a uint8 array of N x 3072 pixels")
    if len(labels) != len(data) or not all(isinstance(x, int) and 0 <= x < n_classes for x in labels):
        raise DatasetError(f"'labels' must be {len(data)} integers in 0..{n_classes - 1}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def find_cifar_batches(folder: Path) -> Path | None:
    """The folder holding the batches: ``folder/cifar-10-batches-py`` or ``folder`` itself."""
    for candidate in (Path(folder) / "cifar-10-batches-py", Path(folder)):
        if any((candidate / name).is_file() for name in ("batches.meta", *CIFAR10_BATCHES)):
            return candidate
    return None


def cifar10_class_names(batches: Path) -> list[str]:
    """Class names from ``batches.meta`` (the official order), or the known ones when it is absent."""
    meta_path = batches / "batches.meta"
    if not meta_path.is_file():
        warnings.warn(f"'{meta_path}' is missing; using the standard CIFAR-10 class names", stacklevel=2)
        return list(CIFAR10_CLASSES)
    names = [_text(n) for n in _get(restricted_load(meta_path), "label_names")]
    if len(names) != 10 or not all(SAFE_CLASS_NAME.fullmatch(n) for n in names):
        raise DatasetError(f"'{meta_path}' does not list 10 plain class names: {names!r}")
    return names


def export_cifar10_png(root: Path, out_dir: Path) -> dict[str, Any]:
    """Write the CIFAR-10 batches under ``root`` as ``out_dir/<class>/<batch>_<index>.png``.

    Returns (and writes to ``out_dir/export.json``) what was exported and the batches that could
    not be read, which the manifest lists as excluded. A pickle asking for anything but plain
    containers and numpy arrays stops the export.
    """
    batches = find_cifar_batches(root)
    if batches is None:
        raise DatasetError(f"no CIFAR-10 python batches (cifar-10-batches-py/) under '{root}'")
    names = cifar10_class_names(batches)
    out_dir = Path(out_dir)
    report: dict[str, Any] = {"batches": str(batches), "classes": names, "images": {}, "problems": []}
    for batch in CIFAR10_BATCHES:
        path = batches / batch
        try:
            images, labels = read_cifar_batch(path)
        except UnsafePickleError:
            raise
        except FileNotFoundError:
            report["problems"].append({"path": str(path), "class_name": "", "reason": "batch file is missing"})
            continue
        except (OSError, EOFError, pickle.UnpicklingError, DatasetError, ValueError, TypeError, KeyError) as error:
            reason = f"cannot read CIFAR-10 batch: {type(error).__name__}: {error}"
            report["problems"].append({"path": str(path), "class_name": "", "reason": reason})
            continue
        for name in names:
            (out_dir / name).mkdir(parents=True, exist_ok=True)
        for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
            Image.fromarray(np.ascontiguousarray(pixels)).save(out_dir / names[label] / f"{batch}_{index:05d}.png")
        report["images"][batch] = len(labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CIFAR_EXPORT_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report


def cifar10_manifest(images_dir: Path) -> Manifest:
    """The PNG folder written by :func:`export_cifar10_png`, labelled in the official order."""
    images_dir = Path(images_dir)
    report = json.loads((images_dir / CIFAR_EXPORT_REPORT).read_text())
    names = list(report["classes"])
    manifest = scan_image_folder(images_dir)
    unknown = sorted(set(manifest.classes) - set(names))
    if unknown:
        raise DatasetError(f"'{images_dir}' has folders that are not CIFAR-10 classes: {', '.join(unknown)}")
    manifest = relabel(manifest, {name: names.index(name) for name in manifest.classes}, names)
    is_test = manifest.images["id"].map(lambda i: PurePosixPath(i).name.startswith("test_batch"))
    manifest.images["official_subset"] = np.where(is_test, "test", "train")
    problems = pd.DataFrame(report["problems"], columns=EXCLUDED_COLUMNS)
    excluded = pd.concat([manifest.excluded, problems], ignore_index=True) if len(problems) else manifest.excluded
    manifest = Manifest(images=manifest.images, excluded=excluded, classes=names)
    expected = 6000 if not report["problems"] else None  # 5000 train + 1000 test per class
    check_class_counts(manifest.images, names, expected, len(CIFAR10_CLASSES))
    return manifest


# --- Pascal VOC 2012 -----------------------------------------------------------------------


def find_voc(folder: Path) -> Path | None:
    """The VOC2012 folder (with Annotations/ and JPEGImages/) at or below ``folder``."""
    folder = Path(folder)
    for candidate in (folder / "VOCdevkit" / "VOC2012", folder / "VOC2012", folder):
        if (candidate / "Annotations").is_dir() and (candidate / "JPEGImages").is_dir():
            return candidate
    return None


def voc_objects(xml_path: Path) -> list[tuple[str, float]]:
    """(class name, bounding-box area in pixels) of each object of a VOC annotation."""
    objects = []
    for obj in ET.parse(xml_path).getroot().findall("object"):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"object '{name}' has no bndbox")
        coords = [box.findtext(k) for k in ("xmin", "ymin", "xmax", "ymax")]
        if any(c is None for c in coords):
            raise ValueError(f"object '{name}' has an incomplete bndbox")
        xmin, ymin, xmax, ymax = (float(c) for c in coords)
        # VOC boxes are 1-based and inclusive: a box from 1 to 10 is 10 pixels wide
        objects.append((name, max(0.0, xmax - xmin + 1) * max(0.0, ymax - ymin + 1)))
    return objects


def voc_labels(objects: Iterable[tuple[str, float]]) -> tuple[str | None, list[str]]:
    """The single label (class with the largest total box area; ties: earlier VOC class) and the label set."""
    area: dict[str, float] = {}
    for name, box_area in objects:
        if name in VOC_CLASSES:
            area[name] = area.get(name, 0.0) + box_area
    if not area:
        return None, []
    present = sorted(area, key=VOC_CLASSES.index)
    primary = max(present, key=lambda name: (area[name], -VOC_CLASSES.index(name)))
    return primary, present


def _read_ids(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def voc_manifest(root: Path) -> Manifest:
    """The images of ``ImageSets/Main/trainval.txt``, each labelled from its annotation.

    ``label``/``class_name``: the class with the largest total bounding-box area; ``labels``:
    every class present, '|'-joined in VOC order; ``official_subset``: ``train`` for
    ``train.txt``, ``test`` for ``val.txt`` (VOC's test annotations are not public).
    """
    voc = find_voc(root)
    if voc is None:
        raise DatasetError(f"no VOC2012 tree (VOCdevkit/VOC2012/Annotations, JPEGImages) under '{root}'")
    main = voc / "ImageSets" / "Main"
    if (main / "trainval.txt").is_file():
        ids = _read_ids(main / "trainval.txt")
    else:
        warnings.warn(f"'{main / 'trainval.txt'}' is missing; using every annotation in Annotations/", stacklevel=2)
        ids = sorted(p.stem for p in (voc / "Annotations").glob("*.xml"))
    train = set(_read_ids(main / "train.txt")) if (main / "train.txt").is_file() else set()
    val = set(_read_ids(main / "val.txt")) if (main / "val.txt").is_file() else set()
    rows: list[dict[str, Any]] = []
    excluded: list[dict[str, Any]] = []
    for image_id in ids:
        image = voc / "JPEGImages" / f"{image_id}.jpg"
        xml_path = voc / "Annotations" / f"{image_id}.xml"
        try:
            primary, present = voc_labels(voc_objects(xml_path))
        except FileNotFoundError:
            excluded.append({"path": str(image), "class_name": "", "reason": f"no annotation '{xml_path.name}'"})
            continue
        except (ET.ParseError, ValueError) as error:
            reason = f"cannot read annotation '{xml_path.name}': {error}"
            excluded.append({"path": str(image), "class_name": "", "reason": reason})
            continue
        if primary is None:
            reason = "annotation has no object of the 20 VOC classes"
            excluded.append({"path": str(image), "class_name": "", "reason": reason})
            continue
        record = image_record(image, f"JPEGImages/{image_id}.jpg", VOC_CLASSES.index(primary), primary)
        if isinstance(record, str):
            excluded.append({"path": str(image), "class_name": primary, "reason": record})
            continue
        subset = "train" if image_id in train else "test" if image_id in val else ""
        rows.append({**record, "labels": "|".join(present), "official_subset": subset})
    return make_manifest(rows, excluded, VOC_CLASSES, extra=("labels", "official_subset"))


# --- dispatch ------------------------------------------------------------------------------


def build_manifest(source: str, entry: Mapping[str, Any], root: Path, images_dir: Path | None = None) -> Manifest:
    """The manifest of any configured dataset; ``images_dir`` is CIFAR-10's exported PNG folder.

    A dataset in which no image could be used is an error, not an empty table.
    """
    root = Path(root)
    if source in (FOLDER, DIGITS):
        manifest = scan_image_folder(data_dir(root, entry))
    elif source in INDEXED_SOURCES:
        manifest = indexed_manifest(source, entry, root)
    elif source == CIFAR10:
        if images_dir is None:
            raise DatasetError("CIFAR-10's manifest is built from its exported PNG folder (images_dir)")
        manifest = cifar10_manifest(images_dir)
    elif source == VOC2012:
        manifest = voc_manifest(data_dir(root, entry))
    else:
        raise DatasetError(f"unknown dataset source '{source}' (known: {', '.join(SOURCES)})")
    if manifest.images.empty:
        reasons = manifest.excluded["reason"].value_counts().head(3).to_dict() if len(manifest.excluded) else {}
        raise DatasetError(
            f"no usable image in the {source} dataset at '{data_dir(root, entry)}' "
            f"({len(manifest.excluded)} file(s) excluded; most common reasons: {reasons or 'none'})"
        )
    return manifest


def official_split_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """The dataset's own train/test split (``official_subset``) in the split-file format."""
    if "official_subset" not in manifest.columns:
        raise DatasetError(
            f"this dataset has no official split (only {', '.join(OFFICIAL_SPLIT_SOURCES)} have one); "
            "use a ratio split such as 80-20"
        )
    subset = manifest["official_subset"].fillna("").astype(str)
    unassigned = manifest.loc[~subset.isin(["train", "test"]), "id"]
    if len(unassigned):
        raise DatasetError(
            f"{len(unassigned)} image(s) are in neither official subset, e.g. '{unassigned.iloc[0]}'"
        )  # fmt: skip
    return pd.DataFrame({"id": manifest["id"], "label": manifest["label"], "subset": subset})
