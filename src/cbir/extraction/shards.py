"""Sharded extraction: the images a dataset's feature cache lacks, cut into shards.

The manifest rows whose content (SHA-256) is not in the network's feature cache
(:mod:`cbir.extraction.feature_cache`) are cut into shards of ``shard_size`` images; each shard is
extracted by its own job (on a cluster: on many GPUs at once, and a failed shard reruns alone)
into a pack of the cache, and the dataset's feature file is then assembled from the cache in
manifest order. A rerun after adding, changing or renaming files extracts only the new
contents. This module does not import torch, so the workflow can plan shards cheaply.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cbir.data.manifest import read_manifest
from cbir.extraction.feature_cache import FeatureCache, contents_to_extract
from cbir.io import atomic_path

log = logging.getLogger(__name__)

SHARD_DIGITS = 5  # shard names are zero-padded indices: 00000, 00001, ...


@dataclass(frozen=True)
class ShardPlan:
    """Which of a manifest's ``n_images`` rows are extracted (``extract``, in manifest order; all of
    them without a cache), cut into shards of at most ``shard_size`` rows, and the cache folder
    their features go to."""

    n_images: int
    shard_size: int
    extract: tuple[int, ...] | None = None
    cache: str = ""
    _rows: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n_images < 1:
            raise ValueError("a shard plan needs at least one image")
        if self.shard_size < 1:
            raise ValueError(f"shard size must be at least 1, not {self.shard_size}")
        rows = tuple(range(self.n_images)) if self.extract is None else tuple(self.extract)
        if rows and not 0 <= min(rows) <= max(rows) < self.n_images:
            raise ValueError(f"planned rows outside the manifest's {self.n_images} rows")
        object.__setattr__(self, "_rows", rows)

    @property
    def n_extracted(self) -> int:
        return len(self._rows)

    @property
    def n_shards(self) -> int:
        return -(-len(self._rows) // self.shard_size)

    @property
    def names(self) -> list[str]:
        return [shard_name(index) for index in range(self.n_shards)]

    def rows(self, shard: int | str) -> list[int]:
        """The manifest rows of a shard, given by index or name."""
        index = int(shard)
        if not 0 <= index < self.n_shards:
            raise ValueError(f"shard {shard} does not exist: the plan has {self.n_shards} shard(s)")
        return list(self._rows[index * self.shard_size : (index + 1) * self.shard_size])

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_images": self.n_images,
            "shard_size": self.shard_size,
            "n_shards": self.n_shards,
            "n_extracted": self.n_extracted,
            "cache": self.cache,
            "extract": list(self._rows),
        }


def shard_name(index: int) -> str:
    return f"{index:0{SHARD_DIGITS}d}"


def write_shard_plan(
    manifest_path: str | Path, out_path: str | Path, shard_size: int, cache: FeatureCache
) -> ShardPlan:
    """Plan the extraction of the contents of a manifest that ``cache`` lacks; the plan is written as JSON."""
    hashes = pd.read_csv(manifest_path, usecols=["sha256"], dtype={"sha256": str})
    if hashes.empty:
        raise ValueError(f"manifest '{manifest_path}' lists no images: there is nothing to extract")
    extract = contents_to_extract(hashes, cache.index())
    plan = ShardPlan(len(hashes), shard_size, tuple(extract), str(cache.folder))
    with atomic_path(out_path) as tmp:
        tmp.write_text(json.dumps(plan.to_dict()) + "\n")
    return plan


def read_shard_plan(path: str | Path) -> ShardPlan:
    payload = json.loads(Path(path).read_text())
    extract = payload.get("extract")
    return ShardPlan(
        int(payload["n_images"]),
        int(payload["shard_size"]),
        None if extract is None else tuple(int(row) for row in extract),
        str(payload.get("cache", "")),
    )


def read_manifest_rows(manifest_path: str | Path, rows: Sequence[int], n_images: int | None = None) -> pd.DataFrame:
    """The given rows of a manifest (as :func:`cbir.data.manifest.read_manifest` reads them), refused when the
    manifest no longer has the ``n_images`` rows it was planned with."""
    frame = read_manifest(manifest_path)
    if (n_images is not None and len(frame) != n_images) or (rows and max(rows) >= len(frame)):
        raise ValueError(
            f"manifest '{manifest_path}' has {len(frame)} rows, not the {n_images} planned: "
            "it changed after the shards were planned"
        )
    return frame.iloc[list(rows)].reset_index(drop=True)
