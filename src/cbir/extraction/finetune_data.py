"""Fine-tuning's images (decoded as extraction decodes them, augmented for training) and its validation mAP."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as transforms

from cbir.data.images import load_rgb_image
from cbir.extraction.finetune_settings import FinetuneError

# decoded, resized images are kept in memory when all of them take less than this
DECODED_CACHE_BYTES = 1_500_000_000
CROP_SCALE = (0.7, 1.0)
AUGMENTATION = f"random resized crop (area {CROP_SCALE[0]}-{CROP_SCALE[1]}, aspect 3/4-4/3), horizontal flip (p 0.5)"
# queries of the validation mAP ranked at once (a block of queries x the trained rows of distances)
QUERY_BLOCK = 256


class TrainingImages:
    """The images of ``paths``, decoded and resized as extraction does it, as normalised batches.

    ``extraction_transform`` is extraction's transform (:func:`cbir.extraction.preprocess.transform_from_description`):
    its first step, the resize, is applied once per decoding, so that the resized image can be kept in memory
    (when all of them fit in ``cache_bytes``); the rest (to tensor, normalisation) follows, after the
    augmentation for training batches. Only the files of ``paths`` are ever opened.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        extraction_transform: transforms.Compose,
        image_size: int,
        *,
        augment: bool,
        cache_bytes: int = DECODED_CACHE_BYTES,
    ) -> None:
        steps = list(extraction_transform.transforms)
        if not isinstance(steps[0], transforms.Resize):
            raise ValueError(f"extraction's transform does not begin with a resize: {extraction_transform}")
        self.paths = list(paths)
        self.image_size = image_size
        self.resize, self.to_tensor = steps[0], transforms.Compose(steps[1:])
        self.augmentation = (
            transforms.Compose(
                [
                    transforms.RandomResizedCrop(image_size, scale=CROP_SCALE, antialias=True),
                    transforms.RandomHorizontalFlip(),
                ]
            )
            if augment
            else None
        )
        self.cached = len(self.paths) * image_size * image_size * 3 <= cache_bytes
        self._decoded: dict[int, Image.Image] = {}

    def resized(self, row: int) -> Image.Image:
        if row in self._decoded:
            return self._decoded[row]
        path = self.paths[row]
        try:
            image = self.resize(load_rgb_image(path, self.image_size))
        except (OSError, ValueError) as error:  # Pillow's errors for an unreadable or unknown file
            raise FinetuneError(
                f"cannot decode '{path}' of the training split: {error}; remove or replace the file"
            ) from error
        if self.cached:
            self._decoded[row] = image
        return image

    def batch(self, rows: Sequence[int], *, train: bool) -> torch.Tensor:
        """The preprocessed images of ``rows`` (batch, 3, size, size); augmented when ``train`` (global torch RNG)."""
        images = [self.resized(int(row)) for row in rows]
        if train and self.augmentation is not None:
            images = [self.augmentation(image) for image in images]
        return torch.stack([self.to_tensor(image) for image in images])


def batches(rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]


def retrieval_map(
    queries: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray
) -> float:
    """Mean average precision of each query ranking the gallery by Euclidean distance of L2-normalised features.

    Relevant: the gallery items of the query's class. Ties are ranked in gallery order. Queries
    without a relevant item in the gallery are left out (NaN when none has one).
    """
    gallery = _normalised(gallery)
    relevant_counts = np.bincount(gallery_labels, minlength=int(max(query_labels.max(), gallery_labels.max())) + 1)
    ranks = np.arange(1, len(gallery) + 1)
    precisions: list[np.ndarray] = []
    for start in range(0, len(queries), QUERY_BLOCK):
        block = _normalised(queries[start : start + QUERY_BLOCK])
        labels = query_labels[start : start + QUERY_BLOCK]
        # on unit vectors the squared Euclidean distance is 2 - 2 cosine: ranking by -cosine is the same order
        order = np.argsort(-(block @ gallery.T), axis=1, kind="stable")
        relevant = gallery_labels[order] == labels[:, None]
        hits = np.cumsum(relevant, axis=1)
        total = relevant_counts[labels]
        with np.errstate(invalid="ignore", divide="ignore"):
            precisions.append(((hits / ranks) * relevant).sum(axis=1) / total)
    average_precisions = np.concatenate(precisions)
    average_precisions = average_precisions[np.isfinite(average_precisions)]
    return float(average_precisions.mean()) if len(average_precisions) else float("nan")


def _normalised(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
