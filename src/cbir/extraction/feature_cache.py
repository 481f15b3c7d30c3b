"""The content-addressed feature cache: every image's features, keyed by its SHA-256 and the network's fingerprint.

An image is extracted once per network, whatever its path or dataset: adding, changing or
renaming files extracts only the new contents, and a dataset's feature file is assembled from
the cache in manifest order. The cache is a folder per network fingerprint
(``<cache>/<fingerprint id>/``) holding ``fingerprint.json`` (what the network is) and
immutable *packs*: HDF5 files of ``sha256`` and ``features`` rows, each named after the hash
of its contents, so that writers never collide and a pack is never changed once written.

Deleting the cache only costs time (the next run extracts again). It only grows: contents no
dataset lists any more stay until the folder is deleted. This module does not import torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from cbir.data.images import file_sha256
from cbir.extraction.registry import get_backbone
from cbir.extraction.weights import PYPI
from cbir.io import STRING_DTYPE, atomic_path, read_attrs, write_attrs

log = logging.getLogger(__name__)

# Raised whenever decoding or preprocessing changes what an image's features are, so that
# features cached by an older version are not mixed with new ones.
# 2: photos with a Multi-Picture segment (format MPO) decoded as JPEGs (draft scale, simplejpeg)
FEATURE_CODE_VERSION = 2
FINGERPRINT_FILE = "fingerprint.json"
HASH_DTYPE = "S64"  # a SHA-256 as 64 hexadecimal characters
# the dataset of a pack holding its rows' hashes (extract_shard writes packs)
PACK_HASHES = "sha256"
# the extraction settings that change an image's features (speed settings do not)
FEATURE_SETTINGS = ("device", "precision", "feature_dtype", "engine", "calibration_images")
# attributes every pack of a feature file must agree on (device and precision may differ between
# the machines that extracted them: the file records the list of what was used)
_PACK_INVARIANTS = (
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


class CacheError(RuntimeError):
    """The feature cache cannot give what a feature file needs; the message says what and where."""


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _weights_identity(backbone: Mapping[str, Any]) -> dict[str, Any]:
    """What the weights are: a local file by its content, PyPI weights by the package's version."""
    weights = str(backbone.get("weights", "random"))
    if weights == PYPI:
        package = get_backbone(backbone["arch"]).pypi_package
        return {"pypi_package": package, "version": _version(package) if package else None}
    path = Path(weights)
    if path.suffix and path.is_file():
        return {"file_sha256": file_sha256(path)}
    return {}


def _folder_digest(folder: Path) -> str:
    """One SHA-256 over every file of a folder: names and contents."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + file_sha256(path).encode())
    return digest.hexdigest()


def feature_settings(extraction: Mapping[str, Any]) -> dict[str, Any]:
    """The extraction settings that change an image's features (the workflow's extraction params)."""
    settings = {key: extraction.get(key) for key in FEATURE_SETTINGS}
    # decode joined them later: only where it is not the default, so that the caches and jobs of
    # galleries decoded by Pillow (all of them until then) keep their fingerprint and params
    if extraction.get("decode", "pillow") != "pillow":
        settings["decode"] = extraction["decode"]
    return settings


DECODING_AND_COMPUTING = ("torch", "torchvision", "pillow", "simplejpeg", "openvino")


def network_fingerprint(
    backbone: Mapping[str, Any], extraction: Mapping[str, Any], seed: int, engine_folder: str | Path | None = None
) -> dict[str, Any]:
    """Everything an image's features depend on besides the image: architecture, weights (by content),
    pooling, input size, precision, engine (a prepared OpenVINO model by content), preprocessing code,
    seed (random weights) and the versions of the libraries that decode and compute."""
    settings = feature_settings(extraction)
    versions = {package: _version(package) for package in DECODING_AND_COMPUTING}
    if "decode" in settings:
        versions["torchcodec"] = _version("torchcodec")  # the device decoder, where installed
    return {
        "backbone": {key: backbone[key] for key in sorted(backbone)},
        "weights_identity": _weights_identity(backbone),
        "extraction": settings,
        "engine_digest": _folder_digest(Path(engine_folder)) if engine_folder else None,
        "seed": int(seed),
        "feature_code_version": FEATURE_CODE_VERSION,
        "versions": versions,
    }


def fingerprint_id(fingerprint: Mapping[str, Any]) -> str:
    canonical = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def pack_name(hashes: Sequence[str]) -> str:
    """A pack's file name: the hash of the contents it holds, in order."""
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()[:32] + ".h5"


@dataclass(frozen=True)
class FeatureCache:
    """The cache folder of one network fingerprint."""

    folder: Path

    @classmethod
    def open(cls, root: str | Path, fingerprint: Mapping[str, Any]) -> FeatureCache:
        """The folder of ``fingerprint`` under ``root``, created with its ``fingerprint.json`` if new."""
        cache = cls(Path(root) / fingerprint_id(fingerprint))
        record = cache.folder / FINGERPRINT_FILE
        if not record.is_file():
            with atomic_path(record) as tmp:
                tmp.write_text(json.dumps(fingerprint, indent=2, sort_keys=True, default=str) + "\n")
        return cache

    def packs(self) -> list[Path]:
        return sorted(p for p in self.folder.glob("*.h5") if not p.name.startswith("."))

    def index(self) -> dict[str, tuple[int, int]]:
        """Where each cached content is: SHA-256 -> (position in :meth:`packs`, row)."""
        where: dict[str, tuple[int, int]] = {}
        for number, path in enumerate(self.packs()):
            for row, digest in enumerate(_read_pack_hashes(path)):
                where.setdefault(digest, (number, row))
        return where


def _read_pack_hashes(path: Path) -> list[str]:
    try:
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete"):
                raise CacheError(f"feature cache pack '{path}' is incomplete: delete it")
            return [digest.decode() for digest in f[PACK_HASHES][()]]
    except OSError as error:
        raise CacheError(f"feature cache pack '{path}' cannot be read ({error}): delete it") from error


def contents_to_extract(manifest: pd.DataFrame, known: set[str] | Mapping[str, Any]) -> list[int]:
    """The manifest rows whose content is not cached: the first row of each missing SHA-256, in manifest order."""
    missing = ~manifest["sha256"].isin(known) & ~manifest["sha256"].duplicated()
    return [int(row) for row in np.flatnonzero(missing.to_numpy())]


def assemble_features(
    cache: FeatureCache,
    manifest: pd.DataFrame,
    out_path: str | Path,
    *,
    attrs: Mapping[str, Any] | None = None,
    block_rows: int = 4096,
) -> dict[str, int]:
    """Write a dataset's feature file, in manifest order, from the cache.

    The file has what :func:`cbir.extraction.features.extract_to_hdf5` writes (``features``, ``ids``,
    ``paths``, ``labels`` and the network's record), plus ``n_shards`` (the packs read). Rows
    are copied ``block_rows`` at a time, so memory does not grow with the dataset. Returns the
    number of images and of packs read.
    """
    where = cache.index()
    hashes = manifest["sha256"].astype(str).tolist()
    missing = [digest for digest in hashes if digest not in where]
    if missing:
        raise CacheError(
            f"the features of {len(missing)} image(s) are not in the feature cache '{cache.folder}' "
            f"(first: sha256 {missing[0]}); was the cache deleted after the shards were planned? "
            "Rerun with --forcerun plan_shards"
        )
    packs = cache.packs()
    locations = np.array([where[digest] for digest in hashes], dtype=np.int64).reshape(-1, 2)
    used = sorted(set(locations[:, 0].tolist()))
    metas = {number: _pack_meta(packs[number]) for number in used}
    first = metas[used[0]]
    for number in used:
        for key in (*_PACK_INVARIANTS, "dim", "dtype"):
            if metas[number].get(key) != first.get(key):
                raise CacheError(f"pack '{packs[number]}' differs from '{packs[used[0]]}' in {key}")
    dim, dtype = first["dim"], np.dtype(first["dtype"])
    merged = {key: value for key, value in first.items() if key not in {"complete", "dim", "dtype"}}
    for key in ("device", "precision", "precision_reason"):
        values = sorted({str(metas[number].get(key)) for number in used})
        merged[key] = values[0] if len(values) == 1 else values
    merged["n_shards"] = len(used)

    total = len(hashes)
    rows_per_chunk = max(1, min(total, (1 << 20) // (dim * dtype.itemsize)))
    handles: dict[int, h5py.File] = {}
    try:
        with atomic_path(out_path, expected_bytes=total * dim * dtype.itemsize) as tmp, h5py.File(tmp, "w") as out:
            features = out.create_dataset("features", shape=(total, dim), dtype=dtype, chunks=(rows_per_chunk, dim))
            out.create_dataset("ids", data=manifest["id"].astype(str).to_numpy(dtype=object), dtype=STRING_DTYPE)
            out.create_dataset("paths", data=manifest["path"].astype(str).to_numpy(dtype=object), dtype=STRING_DTYPE)
            out.create_dataset("labels", data=manifest["label"].to_numpy(dtype=np.int64))
            write_attrs(out, {**merged, **(attrs or {})})
            for start in range(0, total, block_rows):
                block = locations[start : start + block_rows]
                values = np.empty((len(block), dim), dtype=dtype)
                for number in np.unique(block[:, 0]):
                    if number not in handles:
                        handles[number] = h5py.File(packs[number], "r")
                    selected = np.flatnonzero(block[:, 0] == number)
                    rows = block[selected, 1]
                    unique_rows, inverse = np.unique(rows, return_inverse=True)  # h5py reads increasing rows
                    values[selected] = handles[number]["features"][unique_rows][inverse]
                features[start : start + len(block)] = values
            out.attrs["complete"] = True
    finally:
        for handle in handles.values():
            handle.close()
    log.info("assembled the features of %d images from %d pack(s) of %s", total, len(used), cache.folder)
    return {"images": total, "packs": len(used)}


def _pack_meta(path: Path) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        return {**read_attrs(f), "dim": f["features"].shape[1], "dtype": f["features"].dtype}
