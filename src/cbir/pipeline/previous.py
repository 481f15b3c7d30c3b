"""What a stopped ``cbir index`` run left missing, put back from the last finished run, to be rebuilt.

Snakemake removes a job's old outputs when it starts it, and a failed job's new ones. A run killed or failed
half-way would leave files of the collection missing: ``cbir serve`` could not load its cell, and the next run would
take a missing gallery for a changed one and refit the models an update keeps (``update.refit: when_due``), unlike
the same update run whole. So before a run every file of ``results/<name>/`` is hard-linked into
``results/<name>/.previous/`` (no copy: old contents stay on the disk only while they are replaced). A run that
fails, and the run after one that was killed, link back the files left missing, dated 1970: Snakemake rebuilds each
of them, and what an update keeps stays kept. A run that finishes drops the links. The log, the lock and the run's
config are the run's own and are left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from cbir.io import PARTIAL_MARK
from cbir.layout import EXCLUDED, IGNORED, INDEX_CONFIG, INDEX_LOCK, INDEX_LOG, MANIFEST

PREVIOUS = ".previous"
TAKEN = ".taken"  # written last: a snapshot without it was interrupted, and is taken again
OWN_FILES = {Path(pattern).name for pattern in (INDEX_CONFIG, INDEX_LOCK, INDEX_LOG)}
# made by rules without input files (the manifest follows the folder through a parameter): never put back
REBUILT_FROM_PARAMS = {Path(pattern).name for pattern in (MANIFEST, EXCLUDED, IGNORED)} | {"scan"}


def collection_files(folder: Path) -> list[Path]:
    """The files of a collection a run may rewrite, relative to its folder."""
    if not folder.is_dir():
        return []
    files = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if relative.parts[0] == PREVIOUS or PARTIAL_MARK in path.name or not path.is_file():
            continue
        if len(relative.parts) == 1 and relative.name in OWN_FILES:
            continue
        files.append(relative)
    return sorted(files)


def taken(folder: Path) -> bool:
    return (folder / PREVIOUS / TAKEN).is_file()


def take(folder: Path) -> int:
    """Hard-link every file of the collection into its ``.previous`` folder; how many (0: none, or no links on this
    file system: nothing is kept)."""
    snapshot = folder / PREVIOUS
    shutil.rmtree(snapshot, ignore_errors=True)
    files = collection_files(folder)
    try:
        for relative in files:
            (snapshot / relative).parent.mkdir(parents=True, exist_ok=True)
            os.link(folder / relative, snapshot / relative)
    except OSError:  # a file system without hard links: the run goes on without them
        shutil.rmtree(snapshot, ignore_errors=True)
        return 0
    if files:
        (snapshot / TAKEN).touch()
    return len(files)


def drop(folder: Path) -> None:
    """Forget the snapshot: its mark first, so that one half-removed is never taken for whole."""
    (folder / PREVIOUS / TAKEN).unlink(missing_ok=True)
    shutil.rmtree(folder / PREVIOUS, ignore_errors=True)


def put_back_missing(folder: Path) -> list[Path]:
    """Link back the kept files the collection lacks, dated to 1970 so that Snakemake rebuilds each of them (it only
    keeps what the models of an update keep from being refitted). Files whose rule has no input files are left to be
    rebuilt: only Snakemake's records would tell that they are out of date. Returns the files put back."""
    snapshot = folder / PREVIOUS
    restored = []
    for path in sorted(p for p in snapshot.rglob("*") if p.is_file() and p.name != TAKEN):
        relative = path.relative_to(snapshot)
        target = folder / relative
        if target.exists() or relative.parts[0] in REBUILT_FROM_PARAMS:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # a run's job wrote it meanwhile: that one stays
            os.link(path, target)
            os.utime(target, ns=(0, 0))
            restored.append(target)
    return restored


@contextlib.contextmanager
def previous_kept(folder: Path, notify: Callable[[str], None]) -> Iterator[None]:
    """Around a run of the collection in ``folder`` (holding its lock): put back what an interrupted run left
    missing, keep the last finished state until the run finishes, and put back what a failed run left missing."""
    if taken(folder):  # the last run did not finish: its snapshot is the last finished state
        restored = put_back_missing(folder)
        if restored:
            notify(f"put back {len(restored)} file(s) an interrupted run had removed, as last finished")
    else:
        take(folder)
    try:
        yield
    except BaseException:
        if taken(folder):
            put_back_missing(folder)  # what the failed jobs' removal took: no file of the index is missing
        raise
    drop(folder)
