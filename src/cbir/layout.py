"""The results/ tree: where each artifact of a run lives. The one module that spells it out.

The rules take their path patterns from here (relative to the folder the workflow runs in); a grid
cell, ``cbir serve`` and ``cbir duplicates`` ask it where a cell's or a feature file's neighbours
are (:func:`cell_place`, :func:`features_place`), so a cell copied out of a results tree still
works on its own files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RESULTS = "results"
DATASET = RESULTS + "/{dataset}"
DOWNLOAD_RECORD = DATASET + "/download.json"
PREPARED_IMAGES = DATASET + "/images"  # converted data (digits, CIFAR-10's and Fashion-MNIST's PNGs)
FILE_RECORDS = DATASET + "/cache/file_records.csv"
SCAN_RECORDS = DATASET + "/scan/{shard}-of-{n}.csv"
INDEX_CONFIG = DATASET + "/index-config.yaml"  # the config `cbir index` writes and runs
INDEX_LOCK = DATASET + "/index.lock"  # held by the `cbir index` run updating the collection (cbir.pipeline.lock)
INDEX_LOG = DATASET + "/index.log"  # the full output of `cbir index`'s last run: Snakemake's log and the jobs'
MANIFEST = DATASET + "/manifest.csv"
EXCLUDED = DATASET + "/excluded.csv"
IGNORED = DATASET + "/ignored.csv"  # what is no photo (videos, sidecars, OS files ...), per folder and kind
DUPLICATES = DATASET + "/duplicates.csv"
SPLIT = DATASET + "/splits/{split}.csv"
ENGINE = DATASET + "/engine/{backbone}"
SHARD_PLAN = DATASET + "/shards/{backbone}/plan.json"
SHARD = DATASET + "/shards/{backbone}/{shard}.json"  # a receipt: the pack of the cache holding the shard
FEATURES = DATASET + "/features/{backbone}.h5"
FEATURE_TIMING = DATASET + "/features/{backbone}.timing.json"
COPIES = DATASET + "/features/{backbone}.copies.h5"  # changed copies of a collection's photos (validation's judge)
PCA_BASIS = DATASET + "/{backbone}/{split}/pca_basis.h5"
CELL = DATASET + "/{backbone}/{split}/{pca}"
# of a split's PCA sizes, the one validation chose (grid.measure chosen: the only one measured on the test split)
CHOSEN_PCA = DATASET + "/{backbone}/{split}/chosen_pca.json"
SUMMARY = RESULTS + "/summary"
SUMMARY_HTML = SUMMARY + "/html"
MONTAGE = SUMMARY + "/montages/{dataset}/{backbone}.png"
LOGS = RESULTS + "/logs"
BENCHMARKS = RESULTS + "/benchmarks"

# a grid cell's files (the paper's space is "raw"; the further embedding spaces add their own)
RAW = "raw"
PROJECTION = "projection.h5"
GALLERY = "gallery.h5"
CLASSIFIER = "classifier.h5"
MODEL_FILES = (PROJECTION, GALLERY, CLASSIFIER)  # with one clusters_k<k>.h5, what a query needs
SELECTION = "selection.json"  # the settings chosen by validation inside the training split, and the figures


def cell_folder(dataset: str, backbone: str, split: str, pca: str) -> str:
    return CELL.format(dataset=dataset, backbone=backbone, split=split, pca=pca)


def _in_space(space: str) -> str:
    return "" if space == RAW else f"{space}_"


def clusters_name(k: int | str, space: str = RAW) -> str:
    """``clusters_k<k>.h5`` (the paper's space), ``clusters_<space>_k<k>.h5``; ``"{k}"`` gives the rules' pattern."""
    return f"clusters_{_in_space(space)}k{k}.h5"


def metrics_name(k: int | str, space: str = RAW) -> str:
    return f"metrics_{_in_space(space)}k{k}.json"


def embedding_name(space: str) -> str:
    """The fitted embedding space of a cell (none for ``raw``: the gallery is already in it)."""
    return f"embedding_{space}.h5"


def model_files(k: int | str, space: str = RAW) -> tuple[str, ...]:
    """Every artifact a model with ``k`` clusters per class, searching in ``space``, is loaded from."""
    extra = () if space == RAW else (embedding_name(space),)
    return (*MODEL_FILES, *extra, clusters_name(k, space))


@dataclass(frozen=True)
class DatasetPlace:
    """A dataset's folder ``<root>/results/<dataset>/`` and the files the workflow keeps there."""

    root: Path  # the folder the workflow ran in, against which recorded relative paths resolve
    dataset: str

    @property
    def folder(self) -> Path:
        return self.root / DATASET.format(dataset=self.dataset)

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST.format(dataset=self.dataset)

    @property
    def excluded(self) -> Path:
        return self.root / EXCLUDED.format(dataset=self.dataset)

    def split(self, split: str) -> Path:
        return self.root / SPLIT.format(dataset=self.dataset, split=split)

    def features(self, backbone: str) -> Path:
        return self.root / FEATURES.format(dataset=self.dataset, backbone=backbone)

    def cell(self, backbone: str, split: str, pca: str) -> Path:
        return self.root / cell_folder(self.dataset, backbone, split, pca)


@dataclass(frozen=True)
class CellPlace:
    """Where a grid cell sits in a results tree: its dataset and its backbone, split and PCA size."""

    dataset: DatasetPlace
    backbone: str
    split: str
    pca: str

    @property
    def split_file(self) -> Path:
        return self.dataset.split(self.split)


def _results_parent(path: Path, depth: int) -> tuple[Path, ...] | None:
    """``path``'s parents when ``depth`` of them lie between it and ``<root>/results/``, else None."""
    parents = path.resolve().parents
    if len(parents) <= depth + 1 or parents[depth].name != RESULTS:
        return None
    return tuple(parents)


def cell_place(folder: str | Path) -> CellPlace | None:
    """Where a grid cell ``<root>/results/<dataset>/<backbone>/<split>/<pca>/`` is (None: a cell copied elsewhere)."""
    folder = Path(folder).resolve()
    parents = _results_parent(folder / PROJECTION, 4)
    if parents is None:
        return None
    return CellPlace(DatasetPlace(parents[5], parents[3].name), parents[2].name, parents[1].name, folder.name)


def features_place(path: str | Path) -> DatasetPlace | None:
    """The dataset of a feature file ``<root>/results/<dataset>/features/<backbone>.h5`` (None elsewhere)."""
    parents = _results_parent(Path(path), 2)
    return None if parents is None else DatasetPlace(parents[3], parents[1].name)
