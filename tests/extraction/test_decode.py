"""extraction.decode: device — JPEGs decoded in batches on the extraction device (here the CPU;
on CUDA, nvJPEG: benchmarks/gpu_check.sh) by TorchCodec or, without it, torchvision; other formats
and refused JPEGs by Pillow."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from cbir.data.images import load_rgb_image
from cbir.extraction import decode as batch_decode
from cbir.extraction.decode import EncodedFiles, decode_batch, device_decoded_batches, preprocess_batch
from cbir.extraction.feature_cache import fingerprint_id, network_fingerprint
from cbir.extraction.features import extract_to_hdf5
from cbir.extraction.network import prepare_from_record
from cbir.extraction.preprocess import DECODE, DEVICE_DECODE, transform_from_description
from cbir.extraction.registry import BackboneSpec
from cbir.io import read_attrs
from cbir.pipeline.config import ConfigError, load_schema, validate_config

from helpers import REPO, tiny_config

CPU = torch.device("cpu")
SPEC = BackboneSpec("vgg16", "random", "avg", 64)


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    noise = rng.normal(0, 10, size=(size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(base, dtype=float) + noise, 0, 255).astype(np.uint8))


@pytest.fixture(params=["torchcodec", "torchvision"])
def decoder(request, monkeypatch) -> str:
    """Each of the two device decoders in turn: TorchCodec, and torchvision's where it is missing."""
    if request.param == "torchcodec" and batch_decode.torchcodec_decoder() is None:
        pytest.skip("torchcodec (requirements.txt) is not installed or cannot load")
    if request.param == "torchvision":
        monkeypatch.setattr(batch_decode, "torchcodec_decoder", lambda: None)
    return request.param


def decoded(paths: list[Path]) -> list[np.ndarray]:
    items = [EncodedFiles([str(p) for p in paths])[i] for i in range(len(paths))]
    return [image.permute(1, 2, 0).numpy() for image in decode_batch(items, CPU)]


def test_a_batch_of_jpegs_gives_pillows_pixels(tmp_path: Path, decoder: str):
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter: the stored 300 x 200 is displayed 200 x 300
    kinds = {"420.jpg": {}, "444.jpg": {"subsampling": 0}, "progressive.jpg": {"progressive": True},
             "turned.jpg": {"exif": exif}}  # fmt: skip
    paths = []
    for i, (name, options) in enumerate(kinds.items()):
        paths.append(tmp_path / name)
        photo((300, 200), seed=i).save(paths[-1], quality=90, **options)
    paths.append(tmp_path / "grey.jpg")
    photo((120, 90)).convert("L").save(paths[-1], quality=90)
    paths.append(tmp_path / "phone.jpg")  # a Multi-Picture JPEG (Pillow's MPO): its first picture
    photo((300, 200)).save(paths[-1], format="MPO", save_all=True, append_images=[photo((64, 48))], quality=90)
    items = [EncodedFiles([str(p) for p in paths])[i] for i in range(len(paths))]
    assert all(item.is_jpeg for item in items)
    for path, image in zip(paths, decoded(paths), strict=True):
        expected = np.asarray(load_rgb_image(path))  # Pillow, in full
        assert image.shape == expected.shape, path.name
        assert np.array_equal(image, expected), path.name  # libjpeg-turbo with Pillow's settings
    assert decoded([paths[3]])[0].shape == (300, 200, 3)


def test_other_formats_and_cmyk_are_decoded_by_pillow(tmp_path: Path, decoder: str):
    rgba = Image.new("RGBA", (40, 30), (200, 10, 10, 0))
    rgba.save(tmp_path / "clear.png")
    photo((64, 48)).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=90)
    photo((64, 48)).save(tmp_path / "plain.jpg", quality=90)
    paths = [tmp_path / "clear.png", tmp_path / "cmyk.jpg", tmp_path / "plain.jpg"]
    items = [EncodedFiles([str(p) for p in paths])[i] for i in range(3)]
    assert [item.is_jpeg for item in items] == [False, False, True]
    for path, image in zip(paths[:2], decoded(paths)[:2], strict=True):
        assert np.array_equal(image, np.asarray(load_rgb_image(path)))  # alpha on white, CMYK converted
    assert decoded(paths[:1])[0][0, 0].tolist() == [255, 255, 255]


def test_a_damaged_jpeg_is_named_and_a_bomb_refused(tmp_path: Path, monkeypatch, caplog, decoder: str):
    photo((200, 150)).save(tmp_path / "whole.jpg", quality=90)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    files = EncodedFiles([str(tmp_path / "whole.jpg"), str(tmp_path / "cut.jpg")])
    with (
        caplog.at_level("WARNING", logger="cbir.extraction.decode"),
        pytest.raises(RuntimeError, match=r"cannot read image '.*cut\.jpg'"),
    ):
        decode_batch([files[0], files[1]], CPU)
    assert "cut.jpg' decoded by Pillow: the cpu decoder refused it" in caplog.text  # then Pillow said why not
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(RuntimeError, match=r"cannot read image '.*notes\.jpg'.*cannot identify"):
        EncodedFiles([str(tmp_path / "notes.jpg")])[0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20000)  # between the limit and twice it: cbir refuses, not Pillow
    with pytest.raises(RuntimeError, match=r"whole\.jpg.*exceeds the limit of 20000 pixels"):
        files[0]


def test_the_device_resize_is_the_pillow_transform_within_rounding(tmp_path: Path):
    photo((300, 200)).save(tmp_path / "a.jpg", quality=90)
    image = torch.from_numpy(decoded([tmp_path / "a.jpg"])[0]).permute(2, 0, 1)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    batch = preprocess_batch([image], (64, 64), mean, std)
    description = {"decode": DECODE, "resize": [64, 64], "interpolation": "bilinear, antialiased", "scale": "0..1",
                   "mean": mean, "std": std}  # fmt: skip
    reference = transform_from_description(description)
    expected = reference(load_rgb_image(tmp_path / "a.jpg"))
    assert batch.shape == (1, 3, 64, 64)
    assert torch.allclose(batch[0], expected, atol=1.5 / 255 / 0.224)  # one grey level apart at most


def jpeg_folder(root: Path, n: int) -> list[str]:
    root.mkdir()
    paths = []
    for i in range(n):
        paths.append(str(root / f"{i}.jpg"))
        photo((96 + 8 * i, 80), seed=i).save(paths[-1], quality=90)
    Image.new("RGB", (50, 70), (10, 120, 200)).save(root / "flat.png")
    return [*paths, str(root / "flat.png")]


def test_features_decoded_in_batches_match_pillows_and_the_record_says_how(tmp_path: Path):
    paths = jpeg_folder(tmp_path / "images", 6)
    batches = list(device_decoded_batches(paths, {"resize": [64, 64], "mean": [0.5] * 3, "std": [0.25] * 3}, CPU,
                                          batch_size=4, num_workers=0))  # fmt: skip
    assert [len(b) for b in batches] == [4, 3]
    out = {}
    # no DataLoader worker processes here: after a test process has forked one, preparing OpenVINO
    # engines (tests/test_engines.py, later in the same process) made that process die with SIGSEGV
    # during the next test's Snakemake subprocess (reproduced 3 times; not seen in extraction jobs)
    for decode in ("pillow", "device"):
        path = extract_to_hdf5(paths, [str(i) for i in range(7)], [0] * 7, SPEC, tmp_path / f"{decode}.h5",
                               batch_size=4, num_workers=0, device="cpu", precision="fp32", decode=decode,
                               progress=False)  # fmt: skip
        with h5py.File(path) as f:
            out[decode] = (f["features"][()], read_attrs(f))
    a, b = out["pillow"][0], out["device"][0]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.999
    record = out["device"][1]
    assert record["preprocessing"]["decode"] == DEVICE_DECODE
    assert record["preprocessing"]["jpeg_draft"] is False
    assert out["pillow"][1]["preprocessing"]["decode"] == DECODE
    assert prepare_from_record(record, device="cpu").draft_to is None  # queries decode such a gallery in full


def test_the_decode_setting_joins_the_fingerprint_only_when_not_pillow():
    backbone = {"arch": "vgg16", "weights": "random", "pooling": "avg", "image_size": 64}
    extraction = {"device": "cpu", "precision": "fp32", "feature_dtype": "float32", "engine": "torch"}
    before = fingerprint_id(network_fingerprint(backbone, extraction, seed=0))
    assert fingerprint_id(network_fingerprint(backbone, {**extraction, "decode": "pillow"}, seed=0)) == before
    assert fingerprint_id(network_fingerprint(backbone, {**extraction, "decode": "device"}, seed=0)) != before


def test_the_config_takes_the_two_decoders_only(tmp_path: Path):
    schema = load_schema(REPO / "config" / "schema.yaml")
    config = tiny_config(tmp_path)
    assert validate_config(config, schema)["extraction"]["decode"] == "pillow"
    config["extraction"] = {"decode": "device"}
    assert validate_config(config, schema)["extraction"]["decode"] == "device"
    config["extraction"] = {"decode": "nvjpeg"}
    with pytest.raises(ConfigError, match="decode"):
        validate_config(config, schema)
