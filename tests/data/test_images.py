"""JPEGs decoded by simplejpeg give Pillow's pixels, at the same DCT scale; what it cannot decode goes to Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.data import images
from cbir.data.images import decode_jpeg_fast, jpeg_draft_scale, load_rgb_image, unreadable_reason

pytest.importorskip("simplejpeg", reason="simplejpeg (requirements.txt) is not installed: Pillow decodes alone")


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Smooth colour fields plus noise: what a photo's DCT blocks look like."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    noise = rng.normal(0, 10, size=(size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(base, dtype=float) + noise, 0, 255).astype(np.uint8))


def by_pillow(path: Path, draft_to: int | None, monkeypatch) -> np.ndarray:
    with monkeypatch.context() as patch:
        patch.setattr(images, "simplejpeg", None)
        return np.asarray(load_rgb_image(path, draft_to))


def fast_decodes(monkeypatch) -> list[int]:
    """The scales simplejpeg decoded at (not those left to Pillow), appended as it happens."""
    scales: list[int] = []
    real = images.decode_jpeg_fast

    def spy(path, image, scale=1):
        decoded = real(path, image, scale)
        if decoded is not None:
            scales.append(scale)
        return decoded

    monkeypatch.setattr(images, "decode_jpeg_fast", spy)
    return scales


JPEGS = {
    "4:2:0": {},
    "4:4:4": {"subsampling": 0},
    "progressive": {"progressive": True},
    "quality 40": {"quality": 40},
}


@pytest.mark.parametrize("kind", list(JPEGS))
@pytest.mark.parametrize("size", [(640, 480), (1001, 767), (1800, 1800), (300, 200)])
def test_simplejpeg_gives_pillows_pixels_at_pillows_scale(tmp_path: Path, monkeypatch, kind: str, size):
    path = tmp_path / "photo.jpg"
    photo(size).save(path, **{"quality": 90, **JPEGS[kind]})
    scales = fast_decodes(monkeypatch)
    for draft_to in (None, 224, 64):
        expected = by_pillow(path, draft_to, monkeypatch)
        decoded = np.asarray(load_rgb_image(path, draft_to))
        assert decoded.shape == expected.shape and np.array_equal(decoded, expected), (kind, size, draft_to)
    assert len(scales) == 3  # every decode above went through simplejpeg
    with Image.open(path) as image:
        assert scales == [1, jpeg_draft_scale(image, 224), jpeg_draft_scale(image, 64)]
    if size == (1800, 1800):
        assert scales == [1, 4, 8]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_exif_orientation_is_applied_as_pillow_applies_it(tmp_path: Path, monkeypatch, orientation: int):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "turned.jpg"
    photo((600, 460)).save(path, quality=90, exif=exif)
    scales = fast_decodes(monkeypatch)
    for draft_to in (None, 112):
        assert np.array_equal(np.asarray(load_rgb_image(path, draft_to)), by_pillow(path, draft_to, monkeypatch))
    assert scales == [1, 2]
    if orientation in (5, 6, 7, 8):  # quarter turns: the displayed image is portrait
        assert load_rgb_image(path).size == (460, 600)


def test_a_grey_jpeg_is_decoded_fast_and_made_rgb_as_pillow_does(tmp_path: Path, monkeypatch):
    path = tmp_path / "grey.jpg"
    photo((500, 400)).convert("L").save(path, quality=85)
    scales = fast_decodes(monkeypatch)
    decoded = load_rgb_image(path, 100)
    assert decoded.mode == "RGB" and scales == [2]
    assert np.array_equal(np.asarray(decoded), by_pillow(path, 100, monkeypatch))


def test_a_cmyk_jpeg_is_left_to_pillow(tmp_path: Path, monkeypatch):
    path = tmp_path / "cmyk.jpg"
    photo((200, 150)).convert("CMYK").save(path, quality=90)
    scales = fast_decodes(monkeypatch)
    with Image.open(path) as image:
        assert decode_jpeg_fast(path, image) is None
    assert np.array_equal(np.asarray(load_rgb_image(path)), by_pillow(path, None, monkeypatch))
    assert scales == []


def test_a_truncated_jpeg_is_refused_with_pillows_reason(tmp_path: Path, monkeypatch):
    whole = tmp_path / "whole.jpg"
    photo((400, 300)).save(whole, quality=90)
    path = tmp_path / "truncated.jpg"
    path.write_bytes(whole.read_bytes()[:-2000])
    with Image.open(path) as image:
        assert decode_jpeg_fast(path, image) is None  # libjpeg-turbo's warning is an error here
    reason = unreadable_reason(path)
    with monkeypatch.context() as patch:
        patch.setattr(images, "simplejpeg", None)
        assert reason == unreadable_reason(path)
    assert reason.startswith("cannot decode") and "truncated" in reason


@pytest.mark.parametrize("size", [(448, 448), (449, 900), (895, 3000), (896, 897), (1792, 1792), (5000, 460)])
def test_the_draft_scale_is_the_one_pillow_picks(tmp_path: Path, size):
    path = tmp_path / "photo.jpg"
    photo(size).save(path, quality=80)
    with Image.open(path) as image:
        scale = jpeg_draft_scale(image, 224)
        image.draft("RGB", (448, 448))
        assert image.size == (-(-size[0] // scale), -(-size[1] // scale))


def test_a_photo_with_a_multi_picture_segment_is_decoded_as_a_jpeg(tmp_path: Path, monkeypatch):
    """Pillow opens a JPEG with an MPF segment (phones' HDR and depth photos) as MPO: its first picture
    is the photo, drafted and decoded by simplejpeg like any JPEG, with Pillow's pixels."""
    path = tmp_path / "phone.jpg"
    first = photo((1800, 1200))
    first.save(path, format="MPO", save_all=True, append_images=[photo((320, 240), seed=1)], quality=90)
    with Image.open(path) as image:
        assert image.format == "MPO" and jpeg_draft_scale(image, 224) == 2
    scales = fast_decodes(monkeypatch)
    for draft_to in (None, 224):
        expected = by_pillow(path, draft_to, monkeypatch)
        assert np.array_equal(np.asarray(load_rgb_image(path, draft_to)), expected), draft_to
    assert scales == [1, 2]
    assert np.asarray(load_rgb_image(path, 224)).shape == (600, 900, 3)
