"""Changed copies of a sample of a collection's photos, through the collection's own network: how validation
judges a search without labels (:mod:`cbir.evaluation.validation`).

Each sampled photo is cropped (a random 50-90 % of its area, at its own aspect ratio give or take a
fifth), mirrored half of the time, made brighter or darker and more or less contrasted by up to a
fifth, and JPEG re-encoded at quality 60-90 — the changes a photo goes through between a phone, an
export and a messenger. A good search finds the photo from its copy first. The sample and each
photo's changes are seeded, so the copies are the same on every run.
"""

from __future__ import annotations

import io
from pathlib import Path

import h5py
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from cbir.io import load_arrays, read_attrs, save_arrays

AUGMENTATION = "crop 50-90% area, mirror 1/2, brightness and contrast ±20%, JPEG quality 60-90"
BATCH = 16


def changed_copy(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One changed copy of an RGB image (see the module's description)."""
    width, height = image.size
    area = rng.uniform(0.5, 0.9) * width * height
    aspect = (width / height) * rng.uniform(0.8, 1.25)
    crop_w = int(min(width, max(8, round(np.sqrt(area * aspect)))))
    crop_h = int(min(height, max(8, round(np.sqrt(area / aspect)))))
    left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
    copy = image.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        copy = ImageOps.mirror(copy)
    copy = ImageEnhance.Brightness(copy).enhance(rng.uniform(0.8, 1.2))
    copy = ImageEnhance.Contrast(copy).enhance(rng.uniform(0.8, 1.2))
    buffer = io.BytesIO()
    copy.save(buffer, format="JPEG", quality=int(rng.integers(60, 91)))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def sample_rows(n_images: int, n_copies: int, seed: int) -> np.ndarray:
    """The rows whose photos are copied: ``n_copies`` of ``n_images`` (all when fewer), seeded, ascending."""
    if n_copies >= n_images:
        return np.arange(n_images)
    return np.sort(np.random.default_rng([seed, 1]).choice(n_images, size=n_copies, replace=False))


def extract_copies(
    features_path: str | Path, out_path: str | Path, n_copies: int, seed: int, device: str = "auto",
    root: str | Path | None = None,
) -> int:  # fmt: skip
    """Copy ``n_copies`` photos of a feature file's images and write the copies' features (same network,
    precision and preprocessing as the feature file's) with the ids of their originals; returns how many."""
    import torch  # not for every importer: seconds of start-up

    from cbir.extraction.network import prepare_from_record

    with h5py.File(features_path, "r") as f:
        ids, paths, record = f["ids"].asstr()[()], f["paths"].asstr()[()], read_attrs(f)
    prepared = prepare_from_record(record, device, root)
    rows = sample_rows(len(ids), n_copies, seed)
    tensors, kept, features = [], [], []
    for row in rows:
        rng = np.random.default_rng([seed, int(row)])
        try:
            image = prepared.decode(_resolved(paths[row], root))
        except Exception:  # a photo that can no longer be read is left out of the sample
            continue
        tensors.append(prepared.preprocess(changed_copy(image, rng)))
        kept.append(ids[row])
        if len(tensors) == BATCH:
            features.append(prepared.embed(torch.stack(tensors)))
            tensors = []
    if tensors:
        features.append(prepared.embed(torch.stack(tensors)))
    dim = int(record.get("feature_dim", 0))
    matrix = np.concatenate(features) if features else np.zeros((0, dim), dtype=np.float32)
    save_arrays(out_path, {"features": matrix.astype(np.float32), "ids": np.asarray(kept, dtype=object)},
                {"augmentation": AUGMENTATION, "seed": seed, "n_copies": len(kept)})  # fmt: skip
    return len(kept)


def load_copies(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """The copies' features and their originals' ids."""
    arrays, _ = load_arrays(path)
    return arrays["features"], [str(i) for i in arrays["ids"]]


def _resolved(path: str, root: str | Path | None) -> str:
    return path if root is None or Path(path).is_absolute() else str(Path(root) / path)
