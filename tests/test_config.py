from pathlib import Path

import pytest
import yaml

from cbir.config import ConfigError, grid_cells, load_schema, missing_datasets, parse_split, validate_config

from conftest import REPO

SCHEMA = load_schema(REPO / "config" / "schema.yaml")


def default_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_default_config_is_valid_and_gets_defaults():
    config = validate_config(default_config(), SCHEMA)
    assert config["retrieval"]["top_k"] == 5
    assert config["datasets"]["digits"]["image_size"] == 64
    # the paper's whole split x PCA grid
    assert len(grid_cells(config)) == 4 * 9


def test_paper_config_merged_over_default_is_valid():
    merged = default_config()
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    for key, value in paper.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    config = validate_config(merged, SCHEMA)
    assert config["grid"]["datasets"] == ["corel1k", "corel10k", "ghim10k", "cifar10", "voc2012"]
    assert len(grid_cells(config)) == 5 * 4 * 9


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("seed",), "zero", "'seed'"),
        (("seed",), -1, "'seed'"),
        (("grid", "pca"), [50, "fifty"], "'grid.pca[1]'"),
        (("grid", "splits"), ["80/20"], "'grid.splits[0]'"),
        (("grid", "k"), [0], "'grid.k[0]'"),
        (("extraction", "precision"), "fp8", "allowed: auto, fp32, bf16, fp16"),
        (("backbones", "vgg16", "pooling"), "max", "'backbones.vgg16.pooling'"),
        (("retrieval", "metric"), "manhattan", "'retrieval.metric'"),
    ],
)
def test_wrong_value_names_the_key(path, value, expected):
    config = default_config()
    node = config
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    with pytest.raises(ConfigError, match="invalid configuration") as error:
        validate_config(config, SCHEMA)
    assert expected in str(error.value)


def test_unknown_key_is_named_with_the_allowed_keys():
    config = default_config()
    config["kmeans"]["n_clusters"] = 3
    with pytest.raises(ConfigError) as error:
        validate_config(config, SCHEMA)
    assert "'kmeans'" in str(error.value)
    assert "n_clusters" in str(error.value)
    assert "n_init" in str(error.value)


def test_split_must_sum_to_100():
    config = default_config()
    config["grid"]["splits"] = ["80-20", "75-35"]
    with pytest.raises(ConfigError, match=r"grid.splits\[1\]"):
        validate_config(config, SCHEMA)


def test_grid_names_must_be_defined():
    config = default_config()
    config["grid"]["backbones"] = ["resnet50"]
    with pytest.raises(ConfigError, match=r"'grid.backbones\[0\]': 'resnet50' is not defined"):
        validate_config(config, SCHEMA)


def test_parse_split():
    assert parse_split("80-20") == pytest.approx(0.8)
    assert parse_split("60-40") == pytest.approx(0.6)


def test_missing_folder_dataset_is_reported_with_how_to_get_it(tmp_path: Path):
    config = default_config()
    config["datasets"]["mine"] = {"source": "folder", "path": "mine", "how_to_get": "Ask Alice."}
    config["grid"]["datasets"] = ["digits", "mine"]
    config["data_root"] = str(tmp_path)
    messages = missing_datasets(validate_config(config, SCHEMA))
    assert len(messages) == 1
    assert "dataset 'mine' not found" in messages[0] and "Ask Alice." in messages[0]
    (tmp_path / "mine").mkdir()
    assert missing_datasets(validate_config(config, SCHEMA)) == []
