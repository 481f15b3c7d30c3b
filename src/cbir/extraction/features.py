"""Feature extraction: CNN codes from a pretrained backbone, streamed into HDF5 in chunks."""

from __future__ import annotations

import json
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

from cbir.data.images import load_rgb_image
from cbir.extraction.decode import device_decoded_batches
from cbir.extraction.feature_cache import HASH_DTYPE, PACK_HASHES, pack_name
from cbir.extraction.network import PreparedNetwork, prepare_network
from cbir.extraction.registry import BackboneSpec
from cbir.extraction.shards import ShardPlan, read_manifest_rows
from cbir.io import STRING_DTYPE, atomic_path, library_versions, terminate_cleanly, write_attrs

log = logging.getLogger(__name__)


class ImageFiles(Dataset):
    def __init__(self, paths: Sequence[str], transform: transforms.Compose, draft_to: int | None = None) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.draft_to = draft_to  # large JPEGs decoded at a reduced DCT scale (cbir.data.images.load_rgb_image)

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
    attrs: Mapping[str, Any] | None = None,
    **options: Any,
) -> Path:
    """Run every image once through the backbone and stream the features into ``out_path``, with the
    images' ``ids``, ``paths`` and ``labels`` (the layout of a dataset's feature file).

    Rows are written batch by batch into a chunked dataset, so memory does not grow with the
    number of images; the file appears under its final name only once complete (and with the
    ``complete`` attribute): an interrupted extraction leaves nothing under that name. Options:
    see :func:`stream_features`.
    """
    columns = {
        "ids": (np.asarray(ids, dtype=object), STRING_DTYPE),
        "paths": (np.asarray(paths, dtype=object), STRING_DTYPE),
        "labels": (np.asarray(labels, dtype=np.int64), np.int64),
    }
    return stream_features(paths, spec, out_path, columns=columns, attrs=attrs, **options)


def stream_features(
    paths: Sequence[str],
    spec: BackboneSpec,
    out_path: str | Path,
    *,
    columns: Mapping[str, tuple[np.ndarray, Any]],
    batch_size: int = 32,
    num_workers: int = 1,
    device: str = "auto",
    precision: str = "auto",
    feature_dtype: str = "float32",
    seed: int = 0,
    engine: Mapping[str, Any] | None = None,
    decode: str = "pillow",
    attrs: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """The features of ``paths`` into the ``features`` dataset of a new HDF5 file, beside ``columns``
    (name -> (values, dtype), one value per image) and the network's record as attributes.

    ``decode``: ``pillow`` decodes and resizes in the DataLoader's workers; ``device`` has the
    workers read the files and decodes batches of JPEGs on the extraction device
    (:mod:`cbir.extraction.decode`: nvJPEG on CUDA).
    """
    prepared = prepare_network(
        spec, seed=seed, device=device, precision=precision, batch_size=batch_size, engine=engine, decode=decode
    )
    dim = prepared.feature_dim
    if decode == "device":
        loader = device_decoded_batches(paths, prepared.preprocessing, prepared.device, batch_size=batch_size,
                                        num_workers=num_workers)  # fmt: skip
    else:
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
    size = len(paths) * dim * dtype.itemsize  # the features alone: a full disk is told before any is computed
    with terminate_cleanly(), atomic_path(out_path, expected_bytes=size) as tmp, h5py.File(tmp, "w") as f:
        features = f.create_dataset("features", shape=(len(paths), dim), dtype=dtype, chunks=(rows_per_chunk, dim))
        for name, (values, column_dtype) in columns.items():
            f.create_dataset(name, data=values, dtype=column_dtype)
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
        batches = -(-len(paths) // batch_size)
        for batch in tqdm(loader, desc="features", unit="batch", total=batches, file=sys.stderr, disable=not progress):
            out = embed_batch(prepared, batch)
            features[start : start + len(out)] = out.astype(dtype, copy=False)
            start += len(out)
        f.attrs["complete"] = True
    return Path(out_path)


def embed_batch(prepared: PreparedNetwork, batch: torch.Tensor) -> np.ndarray:
    """The features of a batch, the same bits whatever other images share the batch.

    oneDNN computes a batch of one image with other kernels than larger batches, so a lone image
    (the last of a shard, an image added later) is run twice in a batch of two. Larger batches
    give each image the same features whatever their size and neighbours (tests/test_features.py).
    """
    if len(batch) == 1:
        return prepared.embed(batch.expand(2, *batch.shape[1:]).contiguous())[:1]
    return prepared.embed(batch)


def extract_shard(
    manifest_path: str | Path,
    plan: ShardPlan,
    shard: int | str,
    spec: BackboneSpec,
    receipt_path: str | Path,
    *,
    attrs: Mapping[str, Any] | None = None,
    **options: Any,
) -> Path:
    """Extract one shard of a plan into a pack of the feature cache (see :func:`stream_features`), then
    write ``receipt_path``: which pack holds the shard. A pack already there is not extracted again."""
    rows = read_manifest_rows(manifest_path, plan.rows(shard), plan.n_images)
    hashes = rows["sha256"].astype(str).tolist()
    pack = Path(plan.cache) / pack_name(hashes)
    if pack.is_file():
        log.info("shard %s: its %d images are already in the feature cache (%s)", shard, len(hashes), pack)
    else:
        columns = {PACK_HASHES: (np.asarray(hashes, dtype=HASH_DTYPE), HASH_DTYPE)}
        stream_features(rows["path"].tolist(), spec, pack, columns=columns, attrs=attrs, **options)
    receipt = {"shard": int(shard), "images": len(hashes), "pack": str(pack)}
    with atomic_path(receipt_path) as tmp:
        tmp.write_text(json.dumps(receipt) + "\n")
    return Path(receipt_path)
