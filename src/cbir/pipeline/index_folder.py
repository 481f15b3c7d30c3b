"""``cbir index FOLDER``: a folder of photos indexed by the workflow, for someone who does not use Snakemake.

It checks the folder, writes a config for it (``results/<name>/index-config.yaml``), runs the
workflow through Snakemake's API with one line per stage on the screen (Snakemake's log and the
jobs' output go to ``results/<name>/index.log``; a failed job is reported by its own error,
:mod:`cbir.pipeline.progress`), and says which folder to pass to ``cbir query``, ``cbir serve``
and ``cbir duplicates``. Running it again after adding, changing or removing photos updates the
index: only the new contents are extracted (the feature cache), and the model stages are refitted
when due.

Every photo is searchable: a labelled folder's quality is measured on the cell of split 80-20 (a
fifth of each class held out), and the cell that ``cbir query`` and ``cbir serve`` load is split
``all``, fitted on every photo (built as extra targets beside the grid: it is not evaluated, as
nothing is held out of it). A folder without labels has one cell, split ``all``, for both.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import pandas as pd
import yaml

from cbir.data.images import IMAGE_EXTENSIONS
from cbir.data.manifest import excluded_file_count, read_manifest
from cbir.data.scan import count_class_files, count_image_files
from cbir.data.split import ALL
from cbir.fitting.spaces import SPACES
from cbir.io import atomic_path
from cbir.layout import (
    CLASSIFIER,
    FEATURES,
    GALLERY,
    INDEX_CONFIG,
    INDEX_LOCK,
    INDEX_LOG,
    PROJECTION,
    RAW,
    SELECTION,
    SHARD_PLAN,
    DatasetPlace,
    cell_folder,
    clusters_name,
    embedding_name,
    metrics_name,
)
from cbir.pipeline.disk_space import NoRoomError, check_room
from cbir.pipeline.labels import detect_labels
from cbir.pipeline.lock import CollectionBusyError, collection_lock
from cbir.pipeline.previous import previous_kept
from cbir.pipeline.progress import Job, Progress, captured_output, failure, quietly, shown
from cbir.pipeline.workflow_files import WorkflowMissingError, default_config, snakefile
from cbir.search.cell import available_k, best_space, chosen_cell

LABEL_CHOICES = ("auto", "none", "folders")
# the settings a failed check may name, as cbir index takes them
OPTION_OF_SETTING = {"data.ignore": "--ignore", "data.max_excluded_fraction": "--max-excluded-fraction"}
# what the run builds: everything the workflow's `all` does but the summary, which every dataset of a folder shares
# (two collections indexed side by side would write it both)
INDEX_TARGET = "all_but_summary"
SPLIT_WITH_LABELS = "80-20"  # a labelled folder: a fifth held out to measure the classifier
# cbir index's backbone, chosen on Corel-1K and Fashion-MNIST by quality and time (docs: "Settings chosen by
# validation")
PHOTO_BACKBONE = "efficientnet_lite2"
PCA = 100  # a collection without labels: nothing to choose the size by yet
# a labelled folder: the sizes fitted, each cell choosing its setting by validation, and the size whose
# choice scored highest on validation searched (cbir.search.cell.chosen_cell)
PCA_CANDIDATES = (100, 256, "original")
PCA_MARGIN = 0.9  # a size must stay below this share of the training images (the split rounds per class)


class FolderIndexError(ValueError):
    """The folder cannot be indexed; the message says why."""


class IndexRunError(FolderIndexError):
    """The workflow stopped: the message is the failed step's own error; ``log`` is the run's full log,
    ``job_log`` the failed job's."""

    def __init__(self, message: str, log: Path, job_log: Path | None = None) -> None:
        super().__init__(message)
        self.log = log
        self.job_log = job_log


@dataclass(frozen=True)
class IndexPlan:
    """What ``cbir index`` runs: the dataset's name, its labels, the split its quality is measured on, and the
    grid cell a query loads (:attr:`cell`, split ``all``: every photo)."""

    name: str
    folder: Path
    labels: str  # "none" or "folders"
    backbone: str
    split: str
    pcas: tuple[str, ...]  # the PCA sizes fitted; validation picks among them (cbir.search.cell.chosen_cell)
    n_images: int
    labels_reason: str = ""  # one line: why these labels (cbir.pipeline.labels), and how to ask for the other

    @property
    def cells(self) -> list[str]:
        """The cells ``cbir query`` and ``cbir serve`` may load, one per PCA size: fitted on every photo."""
        return [cell_folder(self.name, self.backbone, ALL, pca) for pca in self.pcas]

    @property
    def measured_cells(self) -> list[str]:
        """The evaluated cells: split 80-20 for a labelled folder (the same as :attr:`cells` without labels)."""
        return [cell_folder(self.name, self.backbone, self.split, pca) for pca in self.pcas]

    @property
    def log(self) -> str:
        return INDEX_LOG.format(dataset=self.name)

    @property
    def features(self) -> str:
        return FEATURES.format(dataset=self.name, backbone=self.backbone)


def check_folder(folder: str | Path) -> tuple[Path, int]:
    """The folder as an absolute path and its image files, or a :class:`FolderIndexError` saying why it cannot
    be indexed."""
    path = Path(folder).expanduser()
    if not path.exists():
        raise FolderIndexError(f"'{path}' does not exist")
    if not path.is_dir():
        raise FolderIndexError(f"'{path}' is not a folder")
    try:
        with os.scandir(path) as entries:
            next(entries, None)
    except OSError as error:
        raise FolderIndexError(f"cannot read '{path}': {error.strerror or error}") from error
    n_images = count_image_files(path)
    if n_images == 0:
        files = sum(1 for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        what = f"{files} file(s), none of them an image" if files else "no files"
        raise FolderIndexError(
            f"'{path}' holds {what} (image extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}): nothing to index"
        )
    return path.resolve(), n_images


def class_folders(folder: Path) -> int:
    """Sub-folders holding image files: the classes of a labelled layout."""
    return sum(n > 0 for n in count_class_files(folder))


def dataset_name(folder: Path) -> str:
    """A dataset name from the folder's name (letters, digits, underscores)."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", folder.name).strip("_")
    return name or "photos"


def plan_index(folder: str | Path, *, name: str | None, labels: str, backbone: str) -> IndexPlan:
    path, n_images = check_folder(folder)
    if labels not in LABEL_CHOICES:
        raise FolderIndexError(f"--labels must be one of {', '.join(LABEL_CHOICES)}, not '{labels}'")
    decision = detect_labels(path) if labels == "auto" else None  # the layout's rule: cbir.pipeline.labels
    labels = decision.labels if decision else labels
    n_classes = class_folders(path) if labels == "folders" else 0
    if labels == "folders" and n_classes < 2:
        raise FolderIndexError(f"--labels folders needs two or more sub-folders of images in '{path}'")
    if name is not None and not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise FolderIndexError(f"--name '{name}' may hold letters, digits and underscores only")
    split = "all" if labels == "none" else SPLIT_WITH_LABELS
    n_gallery = n_images if split == "all" else int(0.8 * n_images)
    reason = decision.message if decision else f"labels: {labels}, as --labels asked"
    return IndexPlan(name or dataset_name(path), path, labels, backbone, split, pca_sizes(labels, n_gallery),
                     n_images, reason)  # fmt: skip


def pca_sizes(labels: str, n_gallery: int) -> tuple[str, ...]:
    """The PCA sizes fitted: without labels one (100, or none for a small folder); with labels those of
    :data:`PCA_CANDIDATES` the training images allow, for validation to choose among."""
    if labels == "none":
        return (str(PCA),) if n_gallery > PCA else ("original",)
    return tuple(str(n) for n in PCA_CANDIDATES if n == "original" or n < PCA_MARGIN * n_gallery)


def index_config(
    plan: IndexPlan,
    base: Mapping[str, Any],
    extraction: Mapping[str, str] | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The run's config, over the default config ``base``: one dataset, one backbone, one split, one PCA size
    (and ``extraction`` settings such as the engine, and ``data`` settings: the share of unusable files that
    stops the run, extra ``ignore`` patterns)."""
    if plan.backbone not in base["backbones"]:
        raise FolderIndexError(
            f"--backbone '{plan.backbone}' is not in the backbone catalogue (config/config.yaml: "
            f"{', '.join(sorted(base['backbones']))})"
        )
    entry: dict[str, Any] = {"source": "folder", "path": str(plan.folder)}
    if plan.labels == "none":
        entry["labels"] = "none"
    # measure chosen: each PCA size validated, only the one validation chose fitted further and tested
    grid = {"datasets": [plan.name], "backbones": [plan.backbone], "splits": [plan.split], "measure": "chosen",
            "pca": [int(pca) if pca.isdigit() else pca for pca in plan.pcas], "k": base["grid"]["k"]}  # fmt: skip
    if plan.labels == "none":  # the spaces that need no labels; changed copies of the photos judge them
        spaces = base["grid"].get("embeddings", [RAW])
        grid["embeddings"] = [s for s in spaces if s == RAW or (s in SPACES and not SPACES[s].uses_labels)]
    # an update that adds a few photos keeps the fitted models until a refit is due (cbir.fitting.refit)
    # the test split measures the re-ranking validation chose, not the fixed ones (embeddings.rerank: three more
    # whole rankings per space), and the simulated user refines where the index's queries do (feedback.eval_spaces)
    config = {"data_root": str(plan.folder.parent), "grid": grid, "datasets": {plan.name: entry},
              "update": {"refit": "when_due"}, "feedback": {"eval_spaces": "searched"},
              "embeddings": {"rerank": {"query_expansion": {"n": 0}, "dba": {"k": 0}}}}  # fmt: skip
    if data:
        config["data"] = dict(data)
    return {**config, "extraction": dict(extraction)} if extraction else config


def search_cell_files(plan: IndexPlan, config: Mapping[str, Any], base: Mapping[str, Any]) -> list[str]:
    """The files of the cell a query loads, built beside the grid where it is not a grid cell (a labelled
    folder: split ``all``, never evaluated): projection, gallery, classifier, clusters for every k, and each
    further embedding space with its clusters (``config`` over ``base``, as Snakemake merges them)."""
    if plan.split == ALL:
        return []  # the grid's own cell
    ks = config["grid"]["k"]
    spaces = [s for s in config["grid"].get("embeddings", base["grid"].get("embeddings", [RAW])) if s != RAW]
    files = [PROJECTION, GALLERY, CLASSIFIER, SELECTION, *(clusters_name(k) for k in ks)]
    files += [name for space in spaces for name in (embedding_name(space), *(clusters_name(k, space) for k in ks))]
    return [f"{cell}/{name}" for cell in plan.cells for name in files]


def write_index_config(
    plan: IndexPlan,
    workdir: Path,
    extraction: Mapping[str, str] | None = None,
    data: Mapping[str, Any] | None = None,
) -> tuple[Path, list[str]]:
    """The run's config file, and the files to build beside the grid (:func:`search_cell_files`)."""
    base = yaml.safe_load(default_config().read_text())
    path = workdir / INDEX_CONFIG.format(dataset=plan.name)
    config = index_config(plan, base, extraction, data)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, search_cell_files(plan, config, base)


def run_index(
    plan: IndexPlan,
    workdir: Path,
    cores: int,
    extraction: Mapping[str, str] | None = None,
    *,
    data: Mapping[str, Any] | None = None,
    verbose: bool = False,
) -> str:
    """The workflow for the plan's dataset, through Snakemake's API: one line per stage on stderr (``verbose``:
    Snakemake's log and the jobs' output instead), all of it in ``results/<name>/index.log``. Returns the run
    in one line; a run that stops is an :class:`IndexRunError` carrying the failed step's own error. One run per
    collection at a time (:mod:`cbir.pipeline.lock`); Snakemake is imported on first use (the CLI imports this
    module for every command)."""
    try:
        workflow_snakefile = snakefile()
    except WorkflowMissingError as error:
        raise FolderIndexError(str(error)) from None
    try:
        lock = workdir / INDEX_LOCK.format(dataset=plan.name)  # what a stopped run left missing is put back (previous)
        with collection_lock(lock, f"'{plan.name}'", _say), previous_kept(lock.parent, _say):
            check_room(workdir, plan.name, plan.n_images)  # a full disk stops an update before it changes anything
            config, search_files = write_index_config(plan, workdir, extraction, data)
            return _run_workflow(plan, workdir, cores, workflow_snakefile, config, search_files, verbose)
    except (CollectionBusyError, NoRoomError) as error:
        raise FolderIndexError(str(error)) from None


def _say(line: str) -> None:
    print(f"cbir index: {line}", file=sys.stderr)


def _run_workflow(plan: IndexPlan, workdir: Path, cores: int, workflow_snakefile: Path, config: Path,
                  search_files: list[str], verbose: bool) -> str:  # fmt: skip
    """:func:`run_index` under the collection's lock, which stands in for Snakemake's own: that one names no
    process, so a killed run's stops the next, and it spans the folder. What a killed run left marked incomplete
    is built again (``--rerun-incomplete``). The features first, then the rest: Snakemake keeps temporary files while
    a checkpoint is pending (the PCA choice, until validation is done), so a kill would leave them behind for good."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings import types as settings
    from snakemake.settings.enums import Quietness

    log = workdir / plan.log
    with captured_output(log, echo=verbose) as output:
        progress = Progress(io.StringIO() if verbose else output.terminal, stage_details(plan, workdir))
        try:
            for targets in ({plan.features}, {INDEX_TARGET, *search_files}):
                with SnakemakeApi(settings.OutputSettings(quiet={Quietness.HOST}, show_failed_logs=True)) as api:
                    snakemake_log = logging.getLogger("snakemake.logging")
                    # Snakemake's screen into the log file (its sys.stderr may be a test's capture, not descriptor 2)
                    for handler in snakemake_log.handlers:
                        if isinstance(handler, logging.StreamHandler):
                            handler.setStream(output.log)
                    snakemake_log.addHandler(progress)  # once: a handler already there is not added again
                    workflow = api.workflow(resource_settings=settings.ResourceSettings(cores=cores),
                                            config_settings=settings.ConfigSettings(configfiles=[config]),
                                            snakefile=workflow_snakefile, workdir=workdir)  # fmt: skip
                    dag = workflow.dag(settings.DAGSettings(targets=targets, force_incomplete=True))
                    dag.execute_workflow(executor="local", execution_settings=settings.ExecutionSettings(lock=False))
                progress.next_run()
            progress.close_line()  # a terminal's live line, were any left open
        except Exception as error:
            progress.close_line()
            message, job_log = failure(error, progress, workdir)
            options = [option for setting, option in OPTION_OF_SETTING.items() if setting in message]
            if options:
                message += f" (cbir index {', '.join(options)})"
            raise IndexRunError(message, log, job_log) from error
    return progress.summary()


def stage_details(plan: IndexPlan, workdir: Path) -> dict[str, Callable[[list[Job]], str]]:
    """What each stage of the run did, for its progress line: photos usable and left out, photos extracted and
    taken from the feature cache, cells fitted."""
    dataset = DatasetPlace(workdir, plan.name)

    def files(jobs: list[Job]) -> str:
        if not any(job.rule == "manifest" for job in jobs):
            return ""
        n_excluded = excluded_file_count(pd.read_csv(dataset.excluded))
        left_out = f", {n_excluded} left out (each with the reason: {shown(dataset.excluded)})" if n_excluded else ""
        return f"{len(read_manifest(dataset.manifest))} photo(s) usable{left_out}"

    def features(jobs: list[Job]) -> str:
        if not any(job.rule == "plan_shards" for job in jobs):
            return ""
        shards = json.loads((workdir / SHARD_PLAN.format(dataset=plan.name, backbone=plan.backbone)).read_text())
        n_images, n_new = int(shards["n_images"]), int(shards["n_extracted"])
        return f"{n_new} photo(s) extracted, {n_images - n_new} from the feature cache"

    def fitting(jobs: list[Job]) -> str:
        cells = {(job.wildcards.get("split"), job.wildcards.get("pca")) for job in jobs if "pca" in job.wildcards}
        return f"{len(cells)} cell(s)" if cells else ""

    return {"files": quietly(files), "features": quietly(features), "fitting": quietly(fitting)}


def gallery_size(cell: Path) -> int:
    with h5py.File(cell / GALLERY, "r") as f:
        return int(f["ids"].shape[0])


def measured_quality(plan: IndexPlan, cell: Path) -> tuple[str, str]:
    """The space the evaluated cell measured best (``raw`` before any evaluation), and its quality in words."""
    ks = available_k(cell)
    if not ks:
        return RAW, "not measured"
    space, _ = best_space(cell, ks[0])
    path = cell / metrics_name(ks[0], space)
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    n_test = metrics.get("n_test", "?")
    if plan.labels == "none":
        return space, f"each search against exact search over {n_test} photo(s) of the gallery ({shown(path)})"
    map_key = "map_global_reranked" if "map_global_reranked" in metrics else "map_global"
    found = ", ".join(f"{name} {metrics[key]:.3f}" for key, name in (("accuracy", "accuracy"), (map_key, "mAP"))
                      if isinstance(metrics.get(key), float))  # fmt: skip
    chosen = f"space {space}, re-ranking {metrics.get('rerank_chosen', 'none')}, chosen by validation"
    return space, f"{found or 'no metrics'} on the {n_test} held-out photo(s) ({chosen}; k {ks[0]})"


def describe(plan: IndexPlan, workdir: Path) -> str:
    """What was indexed, how many photos are searchable, the commands that use it, and which cell measured
    the quality."""
    where = workdir.resolve()
    # of the PCA sizes, each cell's validated choice decides (the same validation images in each)
    cell = chosen_cell([where / c for c in plan.cells])
    measured = chosen_cell([where / c for c in plan.measured_cells])
    features = where / plan.features
    labels = "without labels" if plan.labels == "none" else "labelled by its sub-folders"
    dataset = DatasetPlace(where, plan.name)
    n_indexed = len(read_manifest(dataset.manifest))
    n_excluded = excluded_file_count(pd.read_csv(dataset.excluded))
    _, quality = measured_quality(plan, measured)
    # the searched cell chose its own setting by validation inside its photos (split all: every photo)
    lines = [
        f"indexed {n_indexed} image(s) in '{plan.folder}' as '{plan.name}' ({labels}); results in {dataset.folder}",
        f"  {gallery_size(cell)} photo(s) searchable, every indexed one: {cell}",
        f"  cbir query PHOTO --model {cell}",
        f"  cbir serve --model {cell}",
        f"  cbir duplicates {features}",
    ]
    if n_excluded:
        lines.append(f"  {n_excluded} file(s) left out, each with the reason, in {dataset.excluded}")
    if plan.split != ALL:
        held_out = f"split {plan.split}: a fifth of each class held out"
        lines.append(f"  quality measured by {measured} ({held_out}): {quality}")
    else:
        lines.append(f"  quality measured by the same cell: {quality}")
    lines.append("Run the same cbir index again after adding photos: only the new ones are extracted.")
    return "\n".join(lines)
