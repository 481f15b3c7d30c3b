"""What a rule's job asks a scheduler for: memory and wall time from the size of what it reads.

The workflow's rules call these from their ``resources``; Snakemake evaluates them again right
before it runs or submits a job, when the job's input exists (in a dry run, before the input
exists, the sizes count as 0 and the estimates fall back to their base values).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import h5py

from cbir.data.split import OFFICIAL, parse_split
from cbir.fitting.pca import choose_pca_method

MB = 1 << 20
# Python with numpy, h5py, pandas and scikit-learn imported, before any data
BASE_MB = 1000


def file_mb(paths: Iterable[str | os.PathLike[str]]) -> float:
    """Total size in MiB of the files that exist (missing ones count as 0)."""
    total = 0
    for path in paths:
        try:
            total += os.path.getsize(path)
        except OSError:
            continue
    return total / MB


def feature_file_shape(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(images, dimension) of a feature file, or None while it does not exist."""
    try:
        with h5py.File(path, "r") as f:
            rows, dim = f["features"].shape
    except (OSError, KeyError):
        return None
    return int(rows), int(dim)


def has_nvidia_driver() -> bool:
    """Whether this machine has an NVIDIA driver (without importing torch)."""
    return os.path.exists("/dev/nvidiactl")


def train_fraction(split: str) -> float:
    """The training share of a split such as '80-20'; 1 for all and for the official split (an upper bound)."""
    return 1.0 if split == OFFICIAL else parse_split(split)


def fit_pca_mem_mb(n_train: int, dim: int, n_components: int, options: Mapping[str, Any]) -> int:
    """Memory of fitting the PCA basis on ``n_train`` images of ``dim`` values.

    exact: the float32 training rows, their float64 copy, and the SVD's factors and workspace
    (about twice the copy); incremental: a float64 batch and the running basis, a few times
    over; sample: the exact estimate on the sample.
    """
    method = choose_pca_method(n_train, options)
    if method == "incremental":
        rows = max(options["batch_size"], n_components) + n_components
        need = 4 * rows * dim * 8
    else:
        if method == "sample":
            n_train = min(n_train, options["sample_size"])
        need = n_train * dim * (4 + 3 * 8)
    return BASE_MB + math.ceil(need / MB)


def extraction_runtime_min(shard_size: int, seconds_per_image: float) -> int:
    """Wall time of one shard job: model loading and a margin, plus the images."""
    return 10 + math.ceil(shard_size * seconds_per_image / 60)
