"""Corel-1K, Corel-10K and GHIM-10K: one folder per class, or numbered files with class = index // size.

``corel1k`` is Corel-1K ("Wang"), ``0.jpg`` … ``999.jpg``, class = index // 100 in the order of
:data:`COREL1K_CLASSES`, or the re-packaging with one folder per class; ``corel10k`` (100 × 100)
and ``ghim10k`` (20 × 500) are one folder per class, or a flat folder of numbered files.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from cbir.data.manifest import (
    DatasetError,
    ImageEntry,
    Manifest,
    check_class_counts,
    image_records,
    make_manifest,
    relabel,
)
from cbir.data.scan import natural_key, scan_image_folder
from cbir.data.sources.source import FETCH_KEYS, Source, data_dir

COREL1K_CLASSES = (
    "africans", "beaches", "buildings", "buses", "dinosaurs",
    "elephants", "flowers", "horses", "mountains", "food",
)  # fmt: skip

INDEX_NAME = re.compile(r"(\d+)\.[A-Za-z0-9]+")


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
    """Numbered files in one folder: class = (index - first_index) // images_per_class.

    Of two files with the same index the first usable one (in natural order) is kept.
    """
    # the names are checked first, then the numbered files inspected together
    steps = [_flat_step(path, spec, first_index) for path in _image_files(folder)]
    numbered = [step for step in steps if isinstance(step, _NumberedFile)]
    records = iter(image_records([step.entry for step in numbered]))
    rows: list[dict[str, Any]] = []
    excluded: list[dict[str, Any]] = []
    seen: dict[int, str] = {}
    for step in steps:
        if not isinstance(step, _NumberedFile):
            excluded.append(step)
            continue
        record = next(records)
        path, name, _, class_name = step.entry
        if step.index in seen:
            reason = f"duplicate index {step.number} (also '{seen[step.index]}')"
            excluded.append({"path": str(path), "class_name": class_name, "reason": reason})
        elif isinstance(record, str):
            excluded.append({"path": str(path), "class_name": class_name, "reason": record})
        else:
            seen[step.index] = name
            rows.append(record)
    return make_manifest(rows, excluded, [spec.name(label) for label in range(spec.n_classes)])


@dataclass(frozen=True)
class _NumberedFile:
    """A file whose name is an index in range: what to inspect, its index from 0, and its number as written."""

    entry: ImageEntry
    index: int
    number: str


def _flat_step(path: Path, spec: IndexedSpec, first_index: int) -> _NumberedFile | dict[str, Any]:
    """The numbered file at ``path``, or the excluded row saying why its name gives no class."""
    match = INDEX_NAME.fullmatch(path.name)
    if not match:
        return {"path": str(path), "class_name": "", "reason": "file name is not an index (<n>.jpg)"}
    total = spec.n_classes * spec.images_per_class
    index = int(match[1]) - first_index
    if not 0 <= index < total:
        reason = (
            f"index {match[1]} outside {first_index}..{first_index + total - 1} "
            f"({spec.n_classes} classes x {spec.images_per_class})"
        )
        return {"path": str(path), "class_name": "", "reason": reason}
    label = index // spec.images_per_class
    return _NumberedFile((path, path.name, label, spec.name(label)), index, match[1])


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


def indexed_manifest(spec: IndexedSpec, entry: Mapping[str, Any], root: Path) -> Manifest:
    """Corel-1K, Corel-10K or GHIM-10K in either layout, with the per-class counts checked."""
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


class IndexedSource(Source):
    """A dataset whose files may be numbered; ``default`` is its class structure without the entry's overrides."""

    keys = frozenset({"path", "subdir", "layout", "images_per_class", "n_classes", "first_index"}) | FETCH_KEYS
    default: IndexedSpec

    def spec(self, entry: Mapping[str, Any]) -> IndexedSpec:
        """The class structure with the entry's overrides (``n_classes``, ``images_per_class``)."""
        n_classes = int(entry.get("n_classes", self.default.n_classes))
        names = self.default.class_names if self.default.class_names and n_classes == self.default.n_classes else None
        return IndexedSpec(n_classes, int(entry.get("images_per_class", self.default.images_per_class)), names)

    def missing_reason(self, entry: Mapping[str, Any], root: Path) -> str | None:
        folder = data_dir(root, entry)
        if not folder.is_dir():
            return f"'{folder}' does not exist"
        if not any(not p.name.startswith(".") for p in folder.iterdir()):
            return f"'{folder}' is empty"
        return None

    def class_sizes(self, entry: Mapping[str, Any], root: Path, official: bool) -> tuple[list[int], str] | None:
        """Declared: n_classes x images_per_class."""
        spec = self.spec(entry)
        return [spec.images_per_class] * spec.n_classes, f"{spec.n_classes} classes x {spec.images_per_class}"

    def manifest(self, entry: Mapping[str, Any], root: Path, images_dir: Path | None = None) -> Manifest:
        return indexed_manifest(self.spec(entry), entry, root)


class Corel1kSource(IndexedSource):
    name = "corel1k"
    default = IndexedSpec(10, 100, COREL1K_CLASSES)
    how_to_provide = "put the 1000 JPEGs there, either flat (0.jpg … 999.jpg) or one sub-folder per class"


class Corel10kSource(IndexedSource):
    name = "corel10k"
    default = IndexedSpec(100, 100)
    how_to_provide = "put the images there, one sub-folder per class or flat numbered files (layout: flat)"


class Ghim10kSource(IndexedSource):
    name = "ghim10k"
    default = IndexedSpec(20, 500)
    how_to_provide = "put the images there, one sub-folder per class or flat numbered files (layout: flat)"
