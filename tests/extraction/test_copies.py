"""Changed copies of a collection's photos: seeded, changed as a phone or a messenger would, and sampled."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cbir.extraction.copies import changed_copy, sample_rows


def photo(size: tuple[int, int] = (200, 150)) -> Image.Image:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, size=(6, 8, 3)).astype(np.uint8)
    return Image.fromarray(base).resize(size, Image.BICUBIC)


def test_a_changed_copy_is_seeded_smaller_and_still_alike():
    image = photo()
    first = changed_copy(image, np.random.default_rng([0, 3]))
    again = changed_copy(image, np.random.default_rng([0, 3]))
    other = changed_copy(image, np.random.default_rng([0, 4]))
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert first.size != other.size or not np.array_equal(np.asarray(first), np.asarray(other))
    area = first.width * first.height / (image.width * image.height)
    assert 0.35 <= area <= 0.95 and first.mode == "RGB"
    # alike, not the same: the mean colour moves by at most the brightness and contrast changes
    assert abs(np.asarray(first, dtype=float).mean() - np.asarray(image, dtype=float).mean()) < 60


def test_the_sample_is_seeded_sorted_and_all_of_a_small_collection():
    rows = sample_rows(1000, 50, seed=0)
    assert len(rows) == 50 and np.all(np.diff(rows) > 0) and np.array_equal(rows, sample_rows(1000, 50, seed=0))
    assert not np.array_equal(rows, sample_rows(1000, 50, seed=1))
    assert np.array_equal(sample_rows(30, 50, seed=0), np.arange(30))
