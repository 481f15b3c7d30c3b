"""Feature extraction: CNN codes from a pretrained backbone, streamed into HDF5 in chunks."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2 as transforms
from tqdm import tqdm

from cbir.backbones import BackboneSpec
from cbir.images import load_rgb_image
from cbir.io import STRING_DTYPE, atomic_path, library_versions, terminate_cleanly, write_attrs
from cbir.network import prepare_network
from cbir.shards import ShardPlan, read_manifest_rows

log = logging.getLogger(__name__)


class ImageFiles(Dataset):
    def __init__(self, paths: Sequence[str], transform: transforms.Compose, draft_to: int | None = None) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.draft_to = draft_to  # large JPEGs decoded at a reduced DCT scale (cbir.images.load_rgb_image)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.paths[index]
        try:
            image = load_rgb_image(path, self.draft_to)
        except Exception as error:
            raise RuntimeError(f"cannot read image '{path}': {error}") from error
        return self.transform(image)


def extract_to_hdf5(
    paths: Sequence[str],
    ids: Sequence[str],
    labels: Sequence[int],
    spec: BackboneSpec,
    out_path: str | Path,
    *,
    batch_size: int = 32,
    num_workers: int = 1,
    device: str = "auto",
    precision: str = "auto",
    feature_dtype: str = "float32",
    seed: int = 0,
    engine: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Run every image once through the backbone and stream the features into ``out_path``.

    Rows are written batch by batch into a chunked dataset, so memory does not grow with the
    number of images; the file appears under its final name only once complete (and with the
    ``complete`` attribute): an interrupted extraction leaves nothing under that name.
    """
    prepared = prepare_network(
        spec, seed=seed, device=device, precision=precision, batch_size=batch_size, engine=engine
    )
    dim = prepared.feature_dim
    loader = DataLoader(
        ImageFiles(paths, prepared.transform, prepared.draft_to),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=prepared.device.type == "cuda",
        shuffle=False,
    )
    dtype = np.dtype(feature_dtype)
    rows_per_chunk = max(1, min(len(paths), (1 << 20) // (dim * dtype.itemsize)))
    log.info(
        "extracting %d images with %s (%s pooling, %d-D) on %s, %s %s (%s)",
        len(paths),
        spec.arch,
        spec.pooling,
        dim,
        prepared.device,
        prepared.engine,
        prepared.precision,
        prepared.precision_reason,
    )
    # SIGTERM (Snakemake stopping, a scheduler cancelling the job) unwinds, and the partial file goes
    with terminate_cleanly(), atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        features = f.create_dataset("features", shape=(len(paths), dim), dtype=dtype, chunks=(rows_per_chunk, dim))
        f.create_dataset("ids", data=np.asarray(ids, dtype=object), dtype=STRING_DTYPE)
        f.create_dataset("paths", data=np.asarray(paths, dtype=object), dtype=STRING_DTYPE)
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
        write_attrs(
            f,
            {
                **prepared.record(),
                "precision_requested": precision,
                "library_versions": library_versions(),
                **(attrs or {}),
            },
        )
        start = 0
        for batch in tqdm(loader, desc="features", unit="batch", file=sys.stderr, disable=not progress):
            out = prepared.embed(batch)
            features[start : start + len(out)] = out.astype(dtype, copy=False)
            start += len(out)
        f.attrs["complete"] = True
    return Path(out_path)


def extract_shard(
    manifest_path: str | Path,
    plan: ShardPlan,
    shard: int | str,
    spec: BackboneSpec,
    out_path: str | Path,
    *,
    attrs: Mapping[str, Any] | None = None,
    **options: Any,
) -> Path:
    """Extract the features of one shard's manifest rows into ``out_path`` (see :func:`extract_to_hdf5`)."""
    start, stop = plan.rows(shard)
    rows = read_manifest_rows(manifest_path, start, stop)
    shard_attrs = {"shard": int(shard), "n_shards": plan.n_shards, "row_start": start, "row_stop": stop}
    return extract_to_hdf5(
        rows["path"].tolist(),
        rows["id"].tolist(),
        rows["label"].tolist(),
        spec,
        out_path,
        attrs={**(attrs or {}), **shard_attrs},
        **options,
    )
