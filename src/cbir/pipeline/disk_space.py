"""Room for an update: before ``cbir index`` rewrites a collection, the space it needs is checked against the free.

An update rewrites the collection's files beside their previous versions, which are kept until it finishes
(:mod:`cbir.pipeline.previous`). Refused before anything is written, the previous index stays whole and ``cbir
serve`` goes on answering from it; once space is freed, the same command runs. The estimate scales the collection's
results by its number of photos, with a margin for the largest file (two jobs write at a time); a disk that fills
all the same stops the job that could not write, with :class:`cbir.io.DiskFullError` naming the file, and the run
puts the previous index back.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cbir.io import free_bytes
from cbir.layout import DATASET, INDEX_LOG, MANIFEST
from cbir.pipeline.previous import PREVIOUS

MARGIN_BYTES = 1_000_000


class NoRoomError(RuntimeError):
    """Too little free space for the update; the message names the folder, the space needed and the space free."""


def update_needs(folder: Path, n_before: int, n_now: int) -> tuple[int, int]:
    """(bytes the update of the collection in ``folder`` needs free, bytes of its results now)."""
    files = [p.relative_to(folder) for p in folder.rglob("*") if p.is_file()]
    sizes = [(folder / p).stat().st_size for p in files if p.parts[0] != PREVIOUS and p.name != Path(INDEX_LOG).name]
    total, largest = sum(sizes), max(sizes, default=0)
    # every file may be written anew beside its previous version, which is kept until the run finishes
    # (cbir.pipeline.previous), at the collection's new size; the new packs of the feature cache in the margin
    return int(total * max(n_now, n_before) / max(n_before, 1)) + 2 * largest + MARGIN_BYTES, total


def check_room(workdir: Path, name: str, n_images: int) -> None:
    """A :class:`NoRoomError` where updating the collection ``name`` (now ``n_images`` files) would not fit; a
    first index has nothing to protect and is not checked."""
    folder = workdir / DATASET.format(dataset=name)
    manifest = workdir / MANIFEST.format(dataset=name)
    if not manifest.is_file():
        return
    try:
        n_before = len(pd.read_csv(manifest, usecols=["id"]))
    except (OSError, ValueError):
        return  # not a manifest this version reads: the run rebuilds it
    needs, total = update_needs(folder, n_before, n_images)
    free = free_bytes(folder)
    if free < needs:
        raise NoRoomError(
            f"not enough space on the device for '{folder}': updating '{name}' needs about {needs / 1e6:.1f} MB "
            f"({total / 1e6:.1f} MB of results now, {n_before} photo(s) then {n_images} file(s) now) and "
            f"{free / 1e6:.1f} MB is free there; nothing was changed: free some space and run the same command again"
        )
