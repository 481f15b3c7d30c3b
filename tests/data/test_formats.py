"""HEIC, AVIF and RAW photos (and upper-case extensions) read by the one reader, its checks and its callers."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cbir.data import images
from cbir.data.images import (
    IMAGE_EXTENSIONS,
    displayed_size,
    load_rgb_image,
    open_within_pixel_limit,
    raw_signature,
    unreadable_reason,
)

from photo_export import ORIENTATION, jpeg_bytes, photo, save, write_dng

pytest.importorskip("pillow_heif", reason="pillow-heif (requirements.txt) is not installed")
pytest.importorskip("rawpy", reason="rawpy (requirements.txt) is not installed")

# the upright picture of a picture stored with each EXIF orientation (what exif_transpose does)
UPRIGHT = {
    1: None,
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_270,
    8: Image.Transpose.ROTATE_90,
}


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size, (a.size, b.size)
    return float(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean())


# --- a DNG that LibRaw reads: an RGGB mosaic of 12-bit linear values, its tags as LibRaw needs them ---------


# --- HEIC and AVIF ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["photo.heic", "IMG_0001.HEIC", "photo.avif", "PHOTO.AVIF", "IMG_0002.JPG"])
def test_heic_and_avif_decode_close_to_the_source_whatever_the_extensions_case(tmp_path: Path, name: str):
    source = photo((320, 240))
    path = save(source, tmp_path / name)
    assert path.suffix.lower() in IMAGE_EXTENSIONS and unreadable_reason(path) is None
    decoded = load_rgb_image(path)
    assert decoded.mode == "RGB" and decoded.size == (320, 240)
    assert mean_difference(decoded, source) < 5.0  # lossy at quality 90: measured 2.6 (HEIC) to 3.2 (JPEG)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_the_orientation_is_applied_once_in_every_format(tmp_path: Path, orientation: int):
    """pillow-heif stores the orientation as the container's rotation, which libheif applies when it decodes
    (and reports the EXIF orientation as 1); Pillow's AVIF reports it as EXIF, applied once as for a JPEG."""
    source = photo((320, 240))
    upright = source.transpose(UPRIGHT[orientation])
    for suffix in (".jpg", ".heic", ".avif"):
        path = save(source, tmp_path / f"turned{suffix}", orientation)
        decoded = load_rgb_image(path)
        assert decoded.size == upright.size == ((320, 240) if orientation == 3 else (240, 320)), suffix
        assert mean_difference(decoded, upright) < 5.0, suffix  # turned twice or not at all: 40 and more
        with open_within_pixel_limit(path) as opened:  # what the manifest records, without decoding
            assert displayed_size(opened) == decoded.size, suffix
            if suffix == ".heic":
                assert opened.getexif().get(ORIENTATION) == 1 and opened.info["original_orientation"] == orientation


def test_the_pixel_limit_refuses_an_oversized_heic_avif_and_raw(tmp_path: Path, monkeypatch):
    source = photo((200, 120))
    paths = [
        save(source, tmp_path / "big.heic"),
        save(source, tmp_path / "big.avif"),
        write_dng(tmp_path / "big.dng", source),
    ]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 15_000)  # Pillow only warns below twice its limit
    for path in paths:
        assert "200x120 = 24000 pixels exceeds the limit of 15000" in unreadable_reason(path), path
        assert unreadable_reason(path).startswith("too many pixels: RAW image" if path.suffix == ".dng" else "too")
        with pytest.raises(Image.DecompressionBombError):
            load_rgb_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # refused by Pillow itself, in its words
    assert all(unreadable_reason(path).startswith("too many pixels:") for path in paths)


def test_a_missing_decoder_package_is_named_for_its_files(tmp_path: Path, monkeypatch):
    heic = save(photo((64, 48)), tmp_path / "IMG_0003.HEIC")
    dng = write_dng(tmp_path / "IMG_0004.DNG", photo((64, 48)))
    monkeypatch.setattr(images, "pillow_heif", None)
    monkeypatch.setitem(sys.modules, "rawpy", None)  # import rawpy raises ImportError
    assert unreadable_reason(heic) == (
        "cannot decode: HEIC/HEIF photos need the pillow-heif package (pip install -r requirements.txt)"
    )
    assert unreadable_reason(dng) == (
        "cannot decode: RAW camera files need the rawpy package (pip install -r requirements.txt)"
    )


# --- RAW ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_a_raw_is_read_from_its_preview_decoded_as_a_jpeg_with_the_raws_orientation(
    tmp_path: Path, monkeypatch, orientation: int
):
    """The preview's own EXIF orientation (3 here) is replaced by the RAW's, applied once; the draft scale
    and the pixels are those of the same JPEG file carrying the RAW's orientation (by simplejpeg and by Pillow)."""
    shown = photo((640, 480), seed=1)  # not the mosaic's picture: told apart
    path = write_dng(tmp_path / "IMG_0005.DNG", photo((800, 600)), orientation, jpeg_bytes(shown, orientation=3))
    same_jpeg = tmp_path / "preview.jpg"  # the same compressed pixels (the EXIF does not change them)
    same_jpeg.write_bytes(jpeg_bytes(shown, orientation))
    for decoder in (images.simplejpeg, None):
        monkeypatch.setattr(images, "simplejpeg", decoder)
        for draft_to in (None, 224, 64):
            decoded, expected = load_rgb_image(path, draft_to), load_rgb_image(same_jpeg, draft_to)
            assert decoded.size == expected.size, (decoder, draft_to)
            assert np.array_equal(np.asarray(decoded), np.asarray(expected)), (decoder, draft_to)
    assert load_rgb_image(path).size == ((480, 640) if orientation in (6, 8) else (640, 480))
    with open_within_pixel_limit(path) as opened:
        assert opened.format == "RAW" and displayed_size(opened) == load_rgb_image(path).size
    assert unreadable_reason(path) is None


@pytest.mark.parametrize("orientation", [1, 6, 8])
def test_a_raw_with_only_a_thumbnail_is_demosaiced_at_half_size_upright(tmp_path: Path, orientation: int):
    source = photo((400, 300))
    thumbnail = jpeg_bytes(photo((80, 60), seed=1))  # smaller than 320 px and than the half-size demosaic
    for path in (
        write_dng(tmp_path / "bare.dng", source, orientation),
        write_dng(tmp_path / "thumbnail.dng", source, orientation, thumbnail),
    ):
        decoded = load_rgb_image(path)
        upright = source.transpose(UPRIGHT[orientation]) if UPRIGHT[orientation] else source
        assert decoded.size == (upright.width // 2, upright.height // 2), path.name
        # LibRaw's output curve and automatic brightness against the plain 2.2 gamma written: measured 9.4
        assert mean_difference(decoded, upright.resize(decoded.size, Image.BILINEAR)) < 15, path.name
        with open_within_pixel_limit(path) as opened:
            assert opened.format == "RAW" and displayed_size(opened) == decoded.size


def test_raw_files_are_told_from_other_files_by_content(tmp_path: Path):
    """By content for an open file (an upload): a 16-bit grey TIFF, which LibRaw would open, stays Pillow's."""
    source = photo((64, 48))
    dng = write_dng(tmp_path / "a.dng", source).read_bytes()
    with_preview = write_dng(tmp_path / "b.dng", source, 1, jpeg_bytes(source)).read_bytes()
    grey16, rgb = io.BytesIO(), io.BytesIO()
    source.convert("L").convert("I;16").save(grey16, format="TIFF")
    source.save(rgb, format="TIFF")
    assert raw_signature(dng) and raw_signature(with_preview)
    assert raw_signature(b"FUJIFILMCCD-RAW 0201") and raw_signature(b"IIRO\x08\0\0\0")
    assert raw_signature(b"\0\0\0\x18ftypcrx \0\0\0\x01") and raw_signature(b"IIU\0\x08\0\0\0")
    assert not raw_signature(grey16.getvalue()) and not raw_signature(rgb.getvalue())
    assert not raw_signature(jpeg_bytes(source)) and not raw_signature(b"II*\0")
    assert load_rgb_image(grey16).size == (64, 48)


def test_a_damaged_raw_gets_one_clear_reason(tmp_path: Path):
    not_raw = tmp_path / "IMG_0006.CR2"
    not_raw.write_bytes(jpeg_bytes(photo((64, 48))))
    assert unreadable_reason(not_raw) == (
        "cannot decode: OSError: not a RAW file LibRaw can read (Unsupported file format or not RAW file)"
    )
    cut = tmp_path / "cut.dng"
    cut.write_bytes(write_dng(tmp_path / "whole.dng", photo((400, 300))).read_bytes()[:3000])
    assert unreadable_reason(cut).startswith("cannot decode: OSError: ")


# --- the reader's callers: manifest inspection, device decoding, uploads -------------------------------------


def test_inspection_and_device_decoding_see_the_new_formats(tmp_path: Path):
    from cbir.data.inspection import ImageFacts, inspect_file
    from cbir.extraction.decode import EncodedFiles

    source = photo((320, 240))
    paths = [
        save(source, tmp_path / "a.JPG", 6),
        save(source, tmp_path / "b.HEIC", 6),
        save(source, tmp_path / "c.avif", 6),
        write_dng(tmp_path / "d.NEF", photo((640, 480)), 6, jpeg_bytes(source)),
        write_dng(tmp_path / "e.dng", photo((640, 480)), 6),
    ]
    facts = [inspect_file(path) for path in paths]
    assert all(isinstance(fact, ImageFacts) for fact in facts), facts
    assert [(fact.width, fact.height) for fact in facts] == [(240, 320)] * 5
    encoded = EncodedFiles([str(path) for path in paths])
    assert [encoded[i].is_jpeg for i in range(len(paths))] == [True, False, False, False, False]
    assert all(encoded[i].data.shape == (3, 320, 240) for i in range(1, len(paths)))


def test_uploads_of_each_format_are_decoded_with_their_displayed_size(tmp_path: Path, monkeypatch):
    from cbir.serve.uploads import UPLOAD_FORMATS, UploadError, decode_image

    assert {"HEIF", "AVIF"} <= set(UPLOAD_FORMATS)
    source = photo((320, 240))
    uploads = {
        "heic": save(source, tmp_path / "a.heic", 6).read_bytes(),
        "avif": save(source, tmp_path / "a.avif", 6).read_bytes(),
        "dng preview": write_dng(tmp_path / "a.dng", photo((640, 480)), 6, jpeg_bytes(source)).read_bytes(),
        "dng demosaic": write_dng(tmp_path / "b.dng", photo((640, 480)), 6).read_bytes(),
    }
    import cbir.data.images as images

    open_raw = images._open_raw
    opened_raws = []
    monkeypatch.setattr(images, "_open_raw", lambda source: opened_raws.append(1) or open_raw(source))
    for name, data in uploads.items():
        opened_raws.clear()
        decoded = decode_image(data, max_pixels=1_000_000, draft_to=60)
        assert len(opened_raws) == (1 if name.startswith("dng") else 0), name  # LibRaw reads a RAW once
        assert decoded.image.mode == "RGB" and (decoded.width, decoded.height) == (240, 320), name
        assert decoded.image.size == ((120, 160) if name == "dng preview" else (240, 320)), name  # draft: JPEGs
        with pytest.raises(UploadError) as refused:
            decode_image(data, max_pixels=50_000)
        assert refused.value.status_code == 413 and "over the limit of 50,000 pixels" in refused.value.message


# --- the same photo's features, JPEG against HEIC and AVIF ---------------------------------------------------


def test_the_features_of_a_photo_saved_as_heic_or_avif_match_its_jpegs(tmp_path: Path):
    from cbir.extraction.build import build_backbone
    from cbir.extraction.preprocess import preprocessing
    from cbir.extraction.registry import BackboneSpec

    spec = BackboneSpec("efficientnet_lite0", "pypi", "avg", 64)
    network = build_backbone(spec)
    transform = preprocessing(spec, network)
    cosines = {}
    for seed in range(3):
        source = photo((640, 480), seed)
        files = {suffix: save(source, tmp_path / f"{seed}{suffix}") for suffix in (".jpg", ".heic", ".avif")}
        with torch.inference_mode():
            features = {
                suffix: network(transform(load_rgb_image(path, spec.image_size)).unsqueeze(0))[0]
                for suffix, path in files.items()
            }
        for suffix in (".heic", ".avif"):
            cosine = float(torch.nn.functional.cosine_similarity(features[".jpg"], features[suffix], dim=0))
            cosines[suffix] = min(cosines.get(suffix, 1.0), cosine)
    print(f"\nfeature cosine to the JPEG (efficientnet_lite0, 64 px, fp32), lowest of 3 photos: {cosines}")
    assert all(cosine >= 0.99 for cosine in cosines.values()), cosines  # measured 0.9993 (AVIF), 0.9996 (HEIC)
