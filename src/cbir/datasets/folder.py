"""``folder``: any image folder, one sub-folder per class (labels in the folders' sorted order)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cbir.datasets.source import FETCH_KEYS, Source, data_dir
from cbir.inspection import listing_digest
from cbir.manifest import Manifest, count_class_files, scan_image_folder


class FolderSource(Source):
    name = "folder"
    keys = frozenset({"path", "subdir"}) | FETCH_KEYS
    how_to_provide = "put its images there as one sub-folder per class"
    path_required = True

    def missing_reason(self, entry: Mapping[str, Any], root: Path) -> str | None:
        folder = data_dir(root, entry)
        return None if folder.is_dir() else f"'{folder}' does not exist"

    def files_state(self, entry: Mapping[str, Any], root: Path) -> str | None:
        folder = data_dir(root, entry)
        return listing_digest(folder) if folder.is_dir() else None

    def class_sizes(self, entry: Mapping[str, Any], root: Path, official: bool) -> tuple[list[int], str] | None:
        """Counted: files with an image extension per class folder (some may still be excluded)."""
        folder = data_dir(root, entry)
        if not folder.is_dir():
            return None
        return count_class_files(folder), f"image files in '{folder}'"

    def manifest(self, entry: Mapping[str, Any], root: Path, images_dir: Path | None = None) -> Manifest:
        return scan_image_folder(data_dir(root, entry))
