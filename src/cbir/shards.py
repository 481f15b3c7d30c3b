"""Sharded extraction: a dataset's manifest cut into shards, and the shards gathered back.

A dataset's manifest is cut into shards of ``shard_size`` consecutive rows; each shard is
extracted by its own job (on a cluster: on many GPUs at once, and a failed shard reruns
alone), then the shards are gathered, in manifest order, into the dataset's single feature
file. This module does not import torch, so the workflow can plan shards cheaply.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from cbir.io import STRING_DTYPE, atomic_path, read_attrs, write_attrs

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SHARD_DIGITS = 5  # shard names are zero-padded indices: 00000, 00001, ...


@dataclass(frozen=True)
class ShardPlan:
    """How a manifest of ``n_images`` rows is cut into shards of at most ``shard_size`` rows."""

    n_images: int
    shard_size: int

    def __post_init__(self) -> None:
        if self.n_images < 1:
            raise ValueError("a shard plan needs at least one image")
        if self.shard_size < 1:
            raise ValueError(f"shard size must be at least 1, not {self.shard_size}")

    @property
    def n_shards(self) -> int:
        return -(-self.n_images // self.shard_size)

    @property
    def names(self) -> list[str]:
        return [shard_name(index) for index in range(self.n_shards)]

    def rows(self, shard: int | str) -> tuple[int, int]:
        """The manifest rows ``[start, stop)`` of a shard, given by index or name."""
        index = int(shard)
        if not 0 <= index < self.n_shards:
            raise ValueError(f"shard {shard} does not exist: the plan has {self.n_shards} shard(s)")
        start = index * self.shard_size
        return start, min(start + self.shard_size, self.n_images)

    def to_dict(self) -> dict[str, Any]:
        return {"n_images": self.n_images, "shard_size": self.shard_size, "n_shards": self.n_shards}


def shard_name(index: int) -> str:
    return f"{index:0{SHARD_DIGITS}d}"


def count_manifest_rows(manifest_path: str | Path) -> int:
    """Images in a manifest, read one column at a time so memory stays small."""
    import pandas as pd

    count = 0
    for chunk in pd.read_csv(manifest_path, usecols=["id"], dtype={"id": str}, chunksize=1 << 18):
        count += len(chunk)
    return count


def write_shard_plan(manifest_path: str | Path, out_path: str | Path, shard_size: int) -> ShardPlan:
    """Plan the shards of a manifest and write the plan as JSON (atomically)."""
    n_images = count_manifest_rows(manifest_path)
    if n_images == 0:
        raise ValueError(f"manifest '{manifest_path}' lists no images: there is nothing to extract")
    plan = ShardPlan(n_images, shard_size)
    with atomic_path(out_path) as tmp:
        tmp.write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
    return plan


def read_shard_plan(path: str | Path) -> ShardPlan:
    payload = json.loads(Path(path).read_text())
    return ShardPlan(int(payload["n_images"]), int(payload["shard_size"]))


def read_manifest_rows(manifest_path: str | Path, start: int, stop: int) -> pd.DataFrame:
    """Rows ``[start, stop)`` of a manifest (as :func:`cbir.manifest.read_manifest` reads them),
    without parsing the other rows."""
    from cbir.manifest import read_manifest

    frame = read_manifest(manifest_path, start, stop)
    if len(frame) != stop - start:
        raise ValueError(
            f"manifest '{manifest_path}' has {start + len(frame)} rows, fewer than the {stop} planned: "
            "it changed after the shards were planned"
        )
    return frame


# attributes that must agree between shards; device and precision (and why it was chosen) may
# differ between the machines that ran them and are then recorded as the list of what was used
_SHARD_INVARIANTS = (
    "arch",
    "weights",
    "pooling",
    "gem_p",
    "image_size",
    "layer",
    "feature_dim",
    "preprocessing",
    "seed",
)


def gather_shards(
    shard_paths: Sequence[str | Path],
    out_path: str | Path,
    *,
    attrs: Mapping[str, Any] | None = None,
    block_bytes: int = 64 << 20,
) -> Path:
    """Concatenate shard feature files, in the given order, into one feature file.

    The result has the datasets and attributes :func:`extract_to_hdf5` writes for the whole
    dataset (``features``, ``ids``, ``paths``, ``labels``; backbone, layer, preprocessing,
    precision, device, versions), plus ``n_shards``. Features are copied block by block
    (about ``block_bytes`` at a time), so memory does not grow with the dataset; the file
    appears under its final name only once complete.
    """
    if not shard_paths:
        raise ValueError("no shards to gather")
    metas = []
    for index, path in enumerate(shard_paths):
        with h5py.File(path, "r") as f:
            meta = read_attrs(f)
            if not meta.get("complete"):
                raise ValueError(f"shard '{path}' is incomplete")
            if "shard" in meta and int(meta["shard"]) != index:
                raise ValueError(f"shard '{path}' is shard {meta['shard']}, expected {index} at this position")
            metas.append({**meta, "rows": f["features"].shape[0], "dim": f["features"].shape[1]})
            metas[-1]["dtype"] = f["features"].dtype
    first = metas[0]
    for path, meta in zip(shard_paths, metas, strict=True):
        for key in (*_SHARD_INVARIANTS, "dim", "dtype"):
            if meta.get(key) != first.get(key):
                raise ValueError(f"shard '{path}' differs from '{shard_paths[0]}' in {key}: {meta.get(key)!r}")
    total = sum(meta["rows"] for meta in metas)
    dim, dtype = first["dim"], np.dtype(first["dtype"])
    rows_per_chunk = max(1, min(total, (1 << 20) // (dim * dtype.itemsize)))
    rows_per_block = max(rows_per_chunk, (block_bytes // (dim * dtype.itemsize)) // rows_per_chunk * rows_per_chunk)

    shard_keys = {"shard", "n_shards", "row_start", "row_stop", "complete"}
    merged = {key: value for key, value in first.items() if key not in shard_keys | {"rows", "dim", "dtype"}}
    for key in ("device", "precision", "precision_reason"):
        used = sorted({str(meta.get(key)) for meta in metas})
        merged[key] = used[0] if len(used) == 1 else used
    merged["n_shards"] = len(shard_paths)

    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as out:
        features = out.create_dataset("features", shape=(total, dim), dtype=dtype, chunks=(rows_per_chunk, dim))
        ids = out.create_dataset("ids", shape=(total,), dtype=STRING_DTYPE)
        paths = out.create_dataset("paths", shape=(total,), dtype=STRING_DTYPE)
        labels = out.create_dataset("labels", shape=(total,), dtype=np.int64)
        write_attrs(out, {**merged, **(attrs or {})})
        start = 0
        for path, meta in zip(shard_paths, metas, strict=True):
            with h5py.File(path, "r") as f:
                n = meta["rows"]
                ids[start : start + n] = f["ids"][()]
                paths[start : start + n] = f["paths"][()]
                labels[start : start + n] = f["labels"][()]
                for offset in range(0, n, rows_per_block):
                    stop = min(offset + rows_per_block, n)
                    features[start + offset : start + stop] = f["features"][offset:stop]
            start += n
        out.attrs["complete"] = True
    log.info("gathered %d shard(s), %d images, into %s", len(shard_paths), total, out_path)
    return Path(out_path)
