"""The input size a large collection of small images is extracted at, chosen by validation on its training images.

A backbone's ``image_size`` suits photos. A smaller image is upscaled to it, and the network's cost grows with the
square of the input size whatever the image holds: Fashion-MNIST's 28-px images through EfficientNet-Lite2 at its
own 260 px cost eight times what they cost at 128 px on 2 cores. Where the images are smaller than the input (the
median of their longer sides, from the manifest) and the collection is large enough for the trial to pay
(``extraction.input_size.min_images``), a stratified sample of training images (in the training set of every
split: no test image is looked at) is extracted at the configured size and at smaller ones (3/4 and 1/2 of it,
multiples of 32), each judged by its leave-one-out mAP on the sample (every sampled image queries the others in
cosine distance; relevant: the same class). The smallest size whose mAP is, at one-sided 95 % confidence (paired
per-query differences), at most ``tolerance`` below the best size's is kept; the engine is then prepared, and every
image extracted, at that size (:mod:`cbir.extraction.engines`). The sizes run through OpenVINO fp32 where the engine
is prepared in OpenVINO (torch fp32 at 260 px is several times slower on a CPU), else through torch fp32.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cbir.data.images import load_rgb_image
from cbir.extraction.build import build_backbone
from cbir.extraction.preprocess import preprocessing
from cbir.extraction.registry import get_backbone

if TYPE_CHECKING:
    import pandas as pd

    from cbir.extraction.registry import BackboneSpec

log = logging.getLogger(__name__)

SIZE_STEP = 32  # candidate sizes are multiples of this (the networks' strides divide it)
SMALLEST_SIZE = 64
SMALLER_FRACTIONS = (0.75, 0.5)  # of the configured size: the other candidates
MIN_PER_CLASS = 2  # a class with fewer sampled images cannot query a relevant one
CONFIDENCE_Z = 1.645  # one-sided 95 %
# the network at one input size, in fp32: preprocessed images (N, 3, size, size) in, features out
Runner = Callable[[torch.nn.Module, int], Callable[[np.ndarray], np.ndarray]]


@dataclass(frozen=True)
class SizeTrial:
    """The sampled training images a trial extracts, their classes, and how close to the best a size must score."""

    paths: list[str]
    labels: np.ndarray
    tolerance: float


@dataclass(frozen=True)
class SizeChoice:
    size: int
    reason: str
    map_by_size: dict[int, float]
    seconds_by_size: dict[int, float]
    bound_by_size: dict[int, float]  # how far below the best size's mAP, at one-sided 95 % confidence


def candidate_sizes(configured: int) -> list[int]:
    """The configured size, then 3/4 and 1/2 of it rounded to multiples of 32 (none below 64), largest first."""
    smaller = {SIZE_STEP * round(configured * fraction / SIZE_STEP) for fraction in SMALLER_FRACTIONS}
    return [configured, *sorted((s for s in smaller if SMALLEST_SIZE <= s < configured), reverse=True)]


def median_longer_side(manifest: pd.DataFrame) -> float | None:
    """The median of the images' longer sides in pixels, from the manifest (None when it records no sizes)."""
    if not {"width", "height"} <= set(manifest.columns) or manifest.empty:
        return None
    sides = np.maximum(manifest["width"].to_numpy(float), manifest["height"].to_numpy(float))
    sides = sides[np.isfinite(sides) & (sides > 0)]
    return float(np.median(sides)) if len(sides) else None


def trial_problem(spec: BackboneSpec, manifest: pd.DataFrame, settings: Mapping[str, Any]) -> str | None:
    """Why the input size is not chosen by a trial for this collection (None where it is)."""
    if settings.get("choose", "auto") == "never":
        return "extraction.input_size.choose is never"
    if get_backbone(spec.arch).fixed_image_size is not None:
        return f"{spec.arch} takes one input size only"
    if len(candidate_sizes(spec.image_size)) < 2:
        return f"no candidate size below {spec.image_size} px"
    min_images = int(settings.get("min_images", 0))
    if len(manifest) < min_images:
        return f"{len(manifest)} images, fewer than extraction.input_size.min_images ({min_images})"
    side = median_longer_side(manifest)
    if side is None or side >= spec.image_size:
        return f"the images are not smaller than the network's {spec.image_size} px input (median side {side} px)"
    return None


def trial_sample(
    manifest: pd.DataFrame, pool: np.ndarray, settings: Mapping[str, Any], seed: int
) -> tuple[list[str], np.ndarray] | None:
    """A seeded sample of the ``pool`` rows (training images of every split), at most ``per_class`` of each class
    and ``max_images`` in all, or None when fewer than two classes have two sampled images each."""
    labels = manifest["label"].to_numpy()
    per_class, max_images = int(settings.get("per_class", 50)), int(settings.get("max_images", 500))
    order = np.random.default_rng([seed, 32]).permutation(np.asarray(pool))
    classes = [c for c in np.unique(labels[order]) if c >= 0]
    if not classes:
        return None
    per_class = max(MIN_PER_CLASS, min(per_class, max_images // len(classes)))
    rows = np.sort(np.concatenate([order[labels[order] == c][:per_class] for c in classes]))
    counts = np.unique(labels[rows], return_counts=True)[1]
    if (counts >= MIN_PER_CLASS).sum() < 2:
        return None
    return manifest["path"].astype(str).to_numpy()[rows].tolist(), labels[rows]


def leave_one_out_aps(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The average precision of every row querying the others (cosine distance; relevant: the same label; ties in
    the order of the rows); NaN for a row with no relevant other."""
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    distance = -(unit @ unit.T)
    np.fill_diagonal(distance, np.inf)
    order = np.argsort(distance, axis=1, kind="stable")[:, :-1]  # the query itself, last, left out
    relevant = (labels[:, None] == labels[None, :])[np.arange(len(labels))[:, None], order]
    hits = np.cumsum(relevant, axis=1)
    n_relevant = relevant.sum(axis=1)
    precision_at_hits = np.where(relevant, hits / np.arange(1, relevant.shape[1] + 1), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_relevant > 0, precision_at_hits.sum(axis=1) / n_relevant, np.nan)


def shortfall_bound(best: np.ndarray, other: np.ndarray) -> float:
    """How much lower ``other``'s mAP may be than ``best``'s, at one-sided 95 % confidence: the mean of the paired
    per-query differences plus 1.645 standard errors (the same queries at both sizes)."""
    differences = (best - other)[np.isfinite(best) & np.isfinite(other)]
    if len(differences) < 2:
        return float("inf")
    return float(differences.mean() + CONFIDENCE_Z * differences.std(ddof=1) / np.sqrt(len(differences)))


def torch_runner(network: torch.nn.Module, size: int) -> Callable[[np.ndarray], np.ndarray]:
    """The network in torch fp32: preprocessed images (N, 3, size, size) in, features out."""

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return network(torch.from_numpy(batch)).float().numpy()

    return run


def _features(run: Callable[[np.ndarray], np.ndarray], transform: Any, paths: Sequence[str], size: int,
              batch_size: int = 32) -> np.ndarray:  # fmt: skip
    images = [transform(load_rgb_image(path, size)).numpy() for path in paths]
    batches = [run(np.stack(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    return np.concatenate(batches).astype(np.float64)


def choose_input_size(spec: BackboneSpec, trial: SizeTrial, seed: int = 0, runner: Runner = torch_runner,
                      network: torch.nn.Module | None = None) -> SizeChoice:  # fmt: skip
    """Extract ``trial``'s images at every candidate size (``runner``: the network at a size, in fp32; ``network``:
    the spec's, when already built) and keep the smallest size whose mAP is, at 95 % confidence, within
    ``trial.tolerance`` of the best size's."""
    network = network if network is not None else build_backbone(spec, seed=seed)
    aps, seconds = {}, {}
    for size in candidate_sizes(spec.image_size):
        started = time.perf_counter()
        transform = preprocessing(replace(spec, image_size=size), network)
        aps[size] = leave_one_out_aps(_features(runner(network, size), transform, trial.paths, size), trial.labels)
        seconds[size] = time.perf_counter() - started
    maps = {size: float(np.nanmean(values)) for size, values in aps.items()}
    best = max(maps, key=lambda size: (maps[size], size))
    bounds = {size: 0.0 if size == best else shortfall_bound(aps[best], aps[size]) for size in aps}
    size = min(s for s in aps if bounds[s] <= trial.tolerance)
    measured = ", ".join(f"{s} px mAP {maps[s]:.4f} (at most {bounds[s]:.4f} below, {seconds[s]:.1f} s)" for s in maps)
    reason = (
        f"input size {size} px chosen on {len(trial.paths)} training images (leave-one-out mAP; the smallest size at "
        f"most {trial.tolerance} below the best at 95 % confidence): {measured}"
    )
    log.info("%s", reason)
    return SizeChoice(size, reason, maps, seconds, bounds)
