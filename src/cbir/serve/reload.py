"""Hot reload: ``cbir serve`` loads its cell again when it is rewritten, and swaps the new model in whole.

A new model is loaded beside the old one (on SIGHUP, or when a periodic check finds the cell's
files changed and settled) and swapped in as one reference: each request reads the model once,
so it sees either the old or the new model, never a mix.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path

from cbir.layout import INDEX_LOCK, MODEL_FILES, cell_place, clusters_name, metrics_name
from cbir.search.cell import available_k
from cbir.serve.model import ServedModel
from cbir.serve.settings import ServeSettings

log = logging.getLogger(__name__)

Signature = tuple[tuple[str, int, int], ...]


def cell_signature(folder: Path) -> Signature | None:
    """Name, modification time and size of each artifact in the cell (None: the folder cannot be listed)."""
    try:
        return tuple(
            (path.name, stat.st_mtime_ns, stat.st_size)
            for path in sorted(folder.iterdir())
            if path.suffix in (".h5", ".json") and path.is_file() and (stat := path.stat())
        )
    except OSError:
        return None


def unfinished_run(folder: Path) -> str | None:
    """What says a run is still writing the cell's collection, or None: the collection's ``cbir index`` lock naming a
    run (one running, killed or failed: it is emptied when a run finishes, cbir.pipeline.lock), or Snakemake's lock
    on the folder the cell's results are in (a run, or one killed before ``snakemake --unlock``). A cell copied out
    of its results folder: None."""
    place = cell_place(folder)
    if place is None:
        return None
    lock = place.dataset.root / INDEX_LOCK.format(dataset=place.dataset.dataset)
    with contextlib.suppress(OSError):
        if lock.read_text().strip():
            return f"the last cbir index of '{place.dataset.dataset}' has not finished ({lock})"
    if any((place.dataset.root / ".snakemake" / "locks").glob("*.lock")):
        return f"a Snakemake run holds '{place.dataset.root}'"
    return None


def cell_settled(folder: Path, k: int | None) -> bool:
    """Whether the workflow looks done with the cell: no run is writing it (:func:`unfinished_run`), and its metrics
    for k are no older than its models.

    The workflow writes ``metrics_k<k>.json`` last; a cell without any metrics file (copied out of
    its run, or the searched cell of a labelled ``cbir index`` folder) counts as settled once no run writes it.
    """
    if unfinished_run(folder):
        return False
    ks = available_k(folder)
    if not ks:
        return False
    k = k if k is not None else ks[0]
    metrics = folder / metrics_name(k)
    if not any(folder.glob("metrics_k*.json")):
        return True
    try:  # a collection without labels has no classifier
        models = [path for path in (folder / name for name in (*MODEL_FILES, clusters_name(k))) if path.exists()]
        newest_model = max((path.stat().st_mtime_ns for path in models), default=None)
        return newest_model is not None and metrics.stat().st_mtime_ns >= newest_model
    except OSError:
        return False


class ModelHolder:
    """The served model behind one reference, replaced whole when the cell changes.

    A request reads :attr:`current` once and uses only that object, so a reload never mixes an
    old and a new model within a request. A new model is loaded beside the running one and only
    swapped in when it loaded completely and the cell's files did not change while it loaded; a
    failed load keeps the old model (and is not retried until the files change again).
    """

    def __init__(self, served: ServedModel) -> None:
        self.current = served
        self.folder = Path(served.settings.model)
        self.signature = cell_signature(self.folder)
        self.reloads = 0
        self._failed: Signature | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._forced = False

    @property
    def settings(self) -> ServeSettings:
        return self.current.settings

    def reload(self, reason: str) -> bool:
        """Load the cell again and swap it in; False (old model kept, reason logged) when that fails."""
        with self._lock:
            before = cell_signature(self.folder)
            try:
                fresh = ServedModel.load(self.settings)
            except Exception as error:  # a half-written or broken cell: keep serving the old model
                self._failed = before
                log.error("cbir serve: reloading '%s' (%s) failed, the previous model stays: %s: %s",
                          self.folder, reason, type(error).__name__, error)  # fmt: skip
                return False
            if cell_signature(self.folder) != before:
                log.warning(
                    "cbir serve: '%s' changed while it was loaded (%s); will load it again", self.folder, reason
                )
                return False
            self.current, self.signature, self._failed = fresh, before, None
            self.reloads += 1
            log.warning("cbir serve: reloaded '%s' (%s): %s", self.folder, reason, describe_cell(fresh))
            return True

    def request_reload(self) -> None:
        """Ask the watcher thread for a reload now (the SIGHUP handler calls this)."""
        self._forced = True
        self._wake.set()

    def check(self, seen: Signature | None) -> Signature | None:
        """One periodic check: reload when the files differ from the loaded ones and are unchanged since
        the previous check (``seen``) and the workflow is done with the cell. Returns what it saw."""
        now = cell_signature(self.folder)
        if now is None or now == self.signature or now == self._failed:
            return None
        if now == seen and cell_settled(self.folder, self.settings.k):
            self.reload("its files changed")
        return now

    def watch(self, stop: threading.Event) -> None:
        """The watcher thread: reloads on request, and checks the files every ``reload_interval`` seconds."""
        interval = self.settings.reload_interval
        seen: Signature | None = None
        while not stop.is_set():
            self._wake.wait(timeout=interval if interval > 0 else None)
            if stop.is_set():
                return
            if self._forced:
                self._wake.clear()
                self._forced = False
                self.reload("SIGHUP")
                seen = None
            elif interval > 0:
                seen = self.check(seen)

    def stop(self, stop: threading.Event) -> None:
        stop.set()
        self._wake.set()


def describe_cell(served: ServedModel) -> str:
    """``dataset/backbone/split/pca, k=…, n gallery images``: a loaded cell in one line of the log."""
    identity = served.model.identity
    return (f"{identity.dataset}/{identity.backbone}/{identity.split}/{identity.pca}, k={served.model.k}, "
            f"{len(served.model.gallery_ids)} gallery images")  # fmt: skip
