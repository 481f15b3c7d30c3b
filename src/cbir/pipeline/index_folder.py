"""``cbir index FOLDER``: a folder of photos indexed by the workflow, for someone who does not use Snakemake.

It checks the folder, writes a config for it (``results/<name>/index-config.yaml``), runs the
workflow through Snakemake's API with its progress display, and says which folder to pass to
``cbir query``, ``cbir serve`` and ``cbir duplicates``. Running it again after adding, changing
or removing photos updates the index: only the new contents are extracted (the feature cache),
and the model stages are refitted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cbir.data.images import IMAGE_EXTENSIONS
from cbir.data.manifest import excluded_file_count, read_manifest
from cbir.data.scan import count_class_files, count_image_files
from cbir.io import atomic_path
from cbir.layout import FEATURES, INDEX_CONFIG, DatasetPlace, cell_folder
from cbir.pipeline.workflow_files import WorkflowMissingError, default_config, snakefile

LABEL_CHOICES = ("auto", "none", "folders")
SPLIT_WITH_LABELS = "80-20"  # a labelled folder: a fifth held out to measure the classifier
PCA = 100


class FolderIndexError(ValueError):
    """The folder cannot be indexed; the message says why."""


@dataclass(frozen=True)
class IndexPlan:
    """What ``cbir index`` runs: the dataset's name, its labels, and the grid cell a query loads."""

    name: str
    folder: Path
    labels: str  # "none" or "folders"
    backbone: str
    split: str
    pca: str
    n_images: int

    @property
    def cell(self) -> str:
        return cell_folder(self.name, self.backbone, self.split, self.pca)

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


def detect_labels(folder: Path, n_classes: int) -> str:
    """``folders`` when the photos are sorted into two or more sub-folders (``n_classes``) and none lies at the top,
    else ``none``."""
    at_top = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir() if p.is_file())
    return "folders" if not at_top and n_classes >= 2 else "none"


def dataset_name(folder: Path) -> str:
    """A dataset name from the folder's name (letters, digits, underscores)."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", folder.name).strip("_")
    return name or "photos"


def plan_index(folder: str | Path, *, name: str | None, labels: str, backbone: str) -> IndexPlan:
    path, n_images = check_folder(folder)
    if labels not in LABEL_CHOICES:
        raise FolderIndexError(f"--labels must be one of {', '.join(LABEL_CHOICES)}, not '{labels}'")
    n_classes = class_folders(path) if labels != "none" else 0
    labels = detect_labels(path, n_classes) if labels == "auto" else labels
    if labels == "folders" and n_classes < 2:
        raise FolderIndexError(f"--labels folders needs two or more sub-folders of images in '{path}'")
    if name is not None and not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise FolderIndexError(f"--name '{name}' may hold letters, digits and underscores only")
    split = "all" if labels == "none" else SPLIT_WITH_LABELS
    n_gallery = n_images if split == "all" else int(0.8 * n_images)
    pca = str(PCA) if n_gallery > PCA else "original"
    return IndexPlan(name or dataset_name(path), path, labels, backbone, split, pca, n_images)


def index_config(
    plan: IndexPlan, base: Mapping[str, Any], extraction: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The run's config, over the default config ``base``: one dataset, one backbone, one split, one PCA size
    (and ``extraction`` settings such as the engine)."""
    if plan.backbone not in base["backbones"]:
        raise FolderIndexError(
            f"--backbone '{plan.backbone}' is not in the backbone catalogue (config/config.yaml: "
            f"{', '.join(sorted(base['backbones']))})"
        )
    entry: dict[str, Any] = {"source": "folder", "path": str(plan.folder)}
    if plan.labels == "none":
        entry["labels"] = "none"
    grid = {"datasets": [plan.name], "backbones": [plan.backbone], "splits": [plan.split],
            "pca": [int(plan.pca) if plan.pca.isdigit() else plan.pca], "k": base["grid"]["k"]}  # fmt: skip
    if plan.labels == "none":
        grid["embeddings"] = ["raw"]  # the further spaces are fitted on labels
    # an update that adds a few photos keeps the fitted models until a refit is due (cbir.fitting.refit)
    config = {"data_root": str(plan.folder.parent), "grid": grid, "datasets": {plan.name: entry},
              "update": {"refit": "when_due"}}  # fmt: skip
    return {**config, "extraction": dict(extraction)} if extraction else config


def write_index_config(plan: IndexPlan, workdir: Path, extraction: Mapping[str, str] | None = None) -> Path:
    base = yaml.safe_load(default_config().read_text())
    path = workdir / INDEX_CONFIG.format(dataset=plan.name)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(index_config(plan, base, extraction), sort_keys=False))
    return path


def run_index(plan: IndexPlan, workdir: Path, cores: int, extraction: Mapping[str, str] | None = None) -> None:
    """The workflow for the plan's dataset, through Snakemake's API (Snakemake prints its progress)."""
    # snakemake on first use: the CLI imports this module for every command
    from snakemake.api import SnakemakeApi
    from snakemake.settings.enums import Quietness
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

    try:
        workflow_snakefile = snakefile()
    except WorkflowMissingError as error:
        raise FolderIndexError(str(error)) from None
    config = write_index_config(plan, workdir, extraction)
    with SnakemakeApi(OutputSettings(quiet={Quietness.RULES, Quietness.HOST})) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(cores=cores),
            config_settings=ConfigSettings(configfiles=[config]),
            snakefile=workflow_snakefile,
            workdir=workdir,
        )
        workflow.dag(DAGSettings(targets={"all"})).execute_workflow(executor="local")


def describe(plan: IndexPlan, workdir: Path) -> str:
    """What was indexed and the commands that use it."""
    where = workdir.resolve()
    cell, features = where / plan.cell, where / plan.features
    labels = "without labels" if plan.labels == "none" else "labelled by its sub-folders"
    dataset = DatasetPlace(where, plan.name)
    n_indexed = len(read_manifest(dataset.manifest))
    n_excluded = excluded_file_count(pd.read_csv(dataset.excluded))
    lines = [
        f"indexed {n_indexed} image(s) in '{plan.folder}' as '{plan.name}' ({labels}); results in {dataset.folder}",
        f"  cbir query PHOTO --model {cell}",
        f"  cbir serve --model {cell}",
        f"  cbir duplicates {features}",
    ]
    if n_excluded:
        lines.append(f"  {n_excluded} file(s) left out, each with the reason, in {dataset.excluded}")
    if plan.split != "all":
        lines.append(f"  (split {plan.split}: a fifth of each class is held out to measure the classifier)")
    lines.append("Run the same cbir index again after adding photos: only the new ones are extracted.")
    return "\n".join(lines)
