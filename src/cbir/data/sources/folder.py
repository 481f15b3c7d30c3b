"""``folder``: any image folder, one sub-folder per class (labels in the folders' sorted order)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cbir.data.manifest import Manifest
from cbir.data.scan import count_class_files, count_image_files, scan_image_folder, scan_unlabelled_folder
from cbir.data.sources.source import FETCH_KEYS, Source, data_dir


class FolderSource(Source):
    """``labels: none``: a collection without labels, every image below the folder (``scan_unlabelled_folder``).

    Either way, what is no photo (videos, sidecars, OS files, hidden and thumbnail folders, ``data.ignore``'s
    patterns) is ignored and listed in ``ignored.csv``, not excluded (:mod:`cbir.data.ignore`)."""

    name = "folder"
    keys = frozenset({"path", "subdir", "labels", "clusters"}) | FETCH_KEYS
    how_to_provide = "put its images there as one sub-folder per class (or any layout with labels: none)"
    path_required = True

    def missing_reason(self, entry: Mapping[str, Any], root: Path) -> str | None:
        folder = data_dir(root, entry)
        return None if folder.is_dir() else f"'{folder}' does not exist"

    def user_folder(self, entry: Mapping[str, Any], root: Path) -> Path | None:
        folder = data_dir(root, entry)
        return folder if folder.is_dir() else None

    def class_sizes(self, entry: Mapping[str, Any], root: Path, official: bool) -> tuple[list[int], str] | None:
        """Counted: files with an image extension per class folder, not ignored (some may still be excluded;
        :mod:`cbir.data.ignore`); without labels, the whole collection is one class."""
        folder = data_dir(root, entry)
        if not folder.is_dir():
            return None
        counts = count_class_files(folder) if is_labelled(entry) else [count_image_files(folder)]
        return counts, f"image files in '{folder}'"

    def manifest(self, entry: Mapping[str, Any], root: Path, images_dir: Path | None = None) -> Manifest:
        folder = data_dir(root, entry)
        return scan_image_folder(folder) if is_labelled(entry) else scan_unlabelled_folder(folder)


def is_labelled(entry: Mapping[str, Any]) -> bool:
    """Whether a dataset entry's images carry labels (every source but a folder with ``labels: none``)."""
    return entry.get("labels", "folders") != "none"
