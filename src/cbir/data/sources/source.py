"""The interface of a dataset source: its config keys, its presence check, class sizes and manifest."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cbir.data.manifest import Manifest

FETCH_KEYS = frozenset({"url", "sha256", "size"})  # any source whose files can be downloaded
COMMON_KEYS = frozenset({"source", "how_to_get"})  # allowed in every entry


def data_dir(root: Path, entry: Mapping[str, Any]) -> Path:
    """The folder inside the dataset folder that holds the files (``subdir``, e.g. an archive's top folder)."""
    return Path(root) / str(entry.get("subdir") or "")


class Source(ABC):
    """One value of ``datasets.<name>.source``: how such a dataset is checked, sized and indexed.

    ``root`` is the dataset folder (``path`` or ``data_root/<name>``); ``entry`` is its config entry.
    """

    name: str
    keys: frozenset[str]  # config keys the entry may hold besides COMMON_KEYS
    how_to_provide: str = ""  # shown for a missing dataset: where its files go, in which layout
    official_split: bool = False  # the manifest carries the dataset's own train/test split (official_subset)
    generated: bool = False  # written by the workflow itself: never missing
    path_required: bool = False  # the entry must name its folder (``path``; no default data_root/<name>)
    # the workflow rule whose output ``folder`` holds the images the manifest is built from
    # (written before the manifest), or None when the manifest reads the dataset's own files
    prepared_by: str | None = None

    @abstractmethod
    def missing_reason(self, entry: Mapping[str, Any], root: Path) -> str | None:
        """Why the local files cannot be used as they are (None when they can)."""

    @abstractmethod
    def manifest(self, entry: Mapping[str, Any], root: Path, images_dir: Path | None = None) -> Manifest:
        """The manifest of the dataset; ``images_dir`` is the folder the workflow exported its images to."""

    def user_folder(self, entry: Mapping[str, Any], root: Path) -> Path | None:
        """The folder of the user's own files the manifest inspects, when it exists; None where the files
        are not the user's to change (downloaded archives, generated or exported images: the rules
        that write them are tracked already).

        The workflow lists it when it starts (:func:`cbir.data.inspection.folder_state`): a digest of its
        files' names, sizes and modification times is a param of the manifest rule, so adding,
        removing or changing a file rebuilds the manifest, and then only what follows from the
        change; and above ``data.scan_shard_size`` files, scan jobs inspect it in shards.
        """
        return None

    def class_sizes(self, entry: Mapping[str, Any], root: Path, official: bool) -> tuple[list[int], str] | None:
        """Images per class as known before the manifest is built, and where that is known from (None: unknown).

        ``official``: only the images the dataset's official split trains on.
        """
        return None

    def images_folder(self, entry: Mapping[str, Any], root: Path, images_dir: Path | None = None) -> Path:
        """The folder every image of the manifest must lie inside: the dataset's files, or the exported images."""
        return data_dir(root, entry)

    def instructions(self, dataset: str) -> str:
        """How to provide a missing dataset of this source named ``dataset``."""
        return (
            f"{self.how_to_provide}, or set datasets.{dataset}.path (or data_root) to where it is, "
            f"or datasets.{dataset}.url with its sha256 to download it"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({getattr(self, 'name', None)!r})"
