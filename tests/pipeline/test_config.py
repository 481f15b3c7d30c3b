from pathlib import Path

import numpy as np
import pytest
import yaml

from cbir.data.split import parse_split
from cbir.pipeline.config import ConfigError, load_schema, validate_config
from cbir.pipeline.grid import grid_cells, missing_datasets

from helpers import REPO, make_image_folder

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


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "config").glob("*.yaml") if p.name != "schema.yaml"))
def test_every_shipped_config_merged_over_the_default_is_valid(name: str):
    merged = default_config()
    for key, value in yaml.safe_load((REPO / "config" / name).read_text()).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    config = validate_config(merged, SCHEMA)
    assert config["feedback"]["method"] in ("learned", "rocchio")  # sections the file leaves out get defaults


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


# --- every key of the schema, given a wrong value -----------------------------------------

# concrete catalogue entries under which the per-entry keys are tried
CATALOGUE_ENTRY = {"datasets": "digits", "backbones": "vgg16"}
WRONG_TYPE_CANDIDATES = ["wrong", 1.5, True, [1], {"a": 1}]
JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list,
              "object": dict, "null": type(None)}  # fmt: skip


def _resolve(schema: dict) -> dict:
    """A sub-schema with its $ref (a shared definition) filled in."""
    if "$ref" not in schema:
        return schema
    definition = SCHEMA["definitions"][schema["$ref"].split("/")[-1]]
    return {**definition, **{key: value for key, value in schema.items() if key != "$ref"}}


def schema_keys(schema: dict = SCHEMA, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict]]:
    """(config path, sub-schema) of every key the schema defines, catalogue entries included."""
    keys = []
    for name, sub in schema.get("properties", {}).items():
        sub = _resolve(sub)
        keys.append(((*path, name), sub))
        keys += schema_keys(sub, (*path, name))
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict) and path and path[-1] in CATALOGUE_ENTRY:
        keys += schema_keys(extra, (*path, CATALOGUE_ENTRY[path[-1]]))
    return keys


def _is_type(value: object, types: list[str]) -> bool:
    if isinstance(value, bool):
        return "boolean" in types
    return any(isinstance(value, JSON_TYPES[t]) for t in types)


def wrong_values(schema: dict) -> list[tuple[str, object, str]]:
    """(case, value, text the message must hold besides the key) for one key's schema."""
    cases = []
    types = schema.get("type")
    if types:
        types = [types] if isinstance(types, str) else types
        value = next(v for v in WRONG_TYPE_CANDIDATES if not _is_type(v, types))
        cases.append(("type", value, "is not of type"))
    if "enum" in schema:
        cases.append(("enum", "bogus", "allowed: " + ", ".join(map(str, schema["enum"]))))
    if "minimum" in schema:
        cases.append(("minimum", schema["minimum"] - 1, f"minimum of {schema['minimum']}"))
    if "exclusiveMinimum" in schema:
        cases.append(("exclusiveMinimum", schema["exclusiveMinimum"], f"{schema['exclusiveMinimum']}"))
    if "maximum" in schema:
        cases.append(("maximum", schema["maximum"] + 1, f"maximum of {schema['maximum']}"))
    if "pattern" in schema:  # the message explains the pattern in words
        cases.append(("pattern", "#no match#", str(schema.get("description", "<no description>")).strip()))
    if schema.get("minItems"):
        cases.append(("minItems", [], "should be non-empty"))
    if "items" in schema:
        item = _resolve(schema["items"])
        if "oneOf" in item:  # grid.pca: an integer or 'original'
            cases.append(("item", [{"a": 1}], "allowed: integer or original"))
        else:
            for case, value, expected in wrong_values(item):
                cases.append((f"item {case}", [value], expected))
    return cases


def _cases() -> list:
    params = []
    for path, schema in schema_keys():
        for case, value, expected in wrong_values(schema):
            params.append(pytest.param(path, value, expected, id=f"{'.'.join(path)}-{case}"))
    return params


def _set(config: dict, path: tuple[str, ...], value: object) -> dict:
    node = config
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return config


def test_the_schema_walk_covers_every_key():
    names = {".".join(path) for path, _ in schema_keys()}
    assert len(names) >= 60
    expected = [
        "seed", "data.max_excluded_fraction", "grid.pca", "datasets.digits.sha256", "backbones.vgg16.arch",
        "extraction.shard_size", "retrieval.faiss.nprobe", "pca_fit.large_method", "mlp.hidden_layers",
    ]  # fmt: skip
    assert set(expected) <= names


@pytest.mark.parametrize(("path", "value", "expected"), _cases())
def test_every_key_with_a_wrong_value_stops_naming_the_key_and_what_is_allowed(path, value, expected):
    config = _set(default_config(), path, value)
    with pytest.raises(ConfigError, match="invalid configuration") as error:
        validate_config(config, SCHEMA)
    message = str(error.value)
    assert f"config key '{'.'.join(path)}" in message, message
    assert expected in message, message


OBJECT_KEYS = [path for path, schema in schema_keys() if schema.get("type") == "object" and "properties" in schema]


@pytest.mark.parametrize("path", [(), *OBJECT_KEYS], ids=lambda p: ".".join(p) or "top")
def test_an_unknown_key_anywhere_is_named_with_the_allowed_keys(path):
    config = default_config()
    node = config
    for key in path:
        node = node.setdefault(key, {})
    node["colour"] = "blue"
    with pytest.raises(ConfigError) as error:
        validate_config(config, SCHEMA)
    message = str(error.value)
    key = ".".join(path) or "<top level>"
    assert f"config key '{key}': unknown key(s) colour; allowed keys:" in message, message


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("grid", "datasets"), ["corel5k"], "'grid.datasets[0]': 'corel5k' is not defined under 'datasets' "
                                            "(defined: digits)"),
        (("grid", "backbones"), ["resnet50"], "'grid.backbones[0]': 'resnet50' is not defined under 'backbones' "
                                              "(defined: efficientnet_lite0, efficientnet_lite2, vgg16)"),
        (("backbones", "vgg16", "arch"), "resnet9000", "allowed: vgg16, efficientnet_lite0"),
        (("datasets", "digits", "source"), "imagenet", "allowed: folder, sklearn_digits, corel1k"),
        (("grid", "splits"), ["80/20"], "'grid.splits[0]': '80/20' does not match "
                                        "'^([0-9]{1,2}-[0-9]{1,2}|official|all)$' "
                                        "(TRAIN-TEST percentages summing to 100, such as 80-20, official or all.)"),
        (("grid", "splits"), ["eighty-twenty"], "'grid.splits[0]'"),
        (("grid", "splits"), ["100-0"], "'grid.splits[0]'"),
        (("grid", "splits"), ["0-99"], "must be TRAIN-TEST percentages that are both above 0 and sum to 100"),
        (("grid", "splits"), ["70-20"], "'grid.splits[0]': '70-20' must be TRAIN-TEST percentages"),
        (("grid", "k"), [3, 3], "'grid.k': [3, 3] has non-unique elements"),
    ],
)  # fmt: skip
def test_unknown_names_and_splits_that_do_not_parse(path, value, expected):
    config = _set(default_config(), path, value)
    with pytest.raises(ConfigError) as error:
        validate_config(config, SCHEMA)
    assert expected in str(error.value), str(error.value)


def test_a_pca_size_above_the_feature_dimension_stops(tmp_path: Path):
    config = default_config()
    config["grid"]["backbones"] = ["vgg16"]
    config["backbones"]["vgg16"] = {"arch": "vgg16", "weights": "random", "pooling": "avg", "image_size": 64}
    config["grid"]["pca"] = [50, 600, "original"]
    with pytest.raises(ConfigError) as error:
        validate_config(config, SCHEMA)
    message = str(error.value)
    assert "config key 'grid.pca[1]': 600 is larger than the feature dimension 512 of backbone 'vgg16'" in message
    assert "(allowed: 1..512 or original)" in message and "grid.pca[0]" not in message
    # VGG16 unpooled: 512 x (size // 32)^2 = 512 x 4 at 64 px
    config["backbones"]["vgg16"]["pooling"] = "none"
    config["grid"]["pca"] = [2048, 2049]
    with pytest.raises(ConfigError, match=r"'grid.pca\[1\]': 2049 is larger than the feature dimension 2048"):
        validate_config(config, SCHEMA)


def test_the_static_feature_dimension_is_the_networks():
    import torch
    from torchvision.models.vgg import cfgs, make_layers

    from cbir.extraction.build import build_backbone, feature_dim
    from cbir.extraction.registry import BackboneSpec
    from cbir.pipeline.grid import static_feature_dim

    vgg16_block5 = make_layers(cfgs["D"])  # torchvision's VGG16 `features`, without its large classifier
    for size in (64, 100):
        with torch.inference_mode():
            maps = vgg16_block5(torch.zeros(1, 3, size, size))
        assert static_feature_dim({"arch": "vgg16", "pooling": "none", "image_size": size}) == maps[0].numel()
        assert static_feature_dim({"arch": "vgg16", "pooling": "gem", "image_size": size}) == maps.shape[1]
    lite = {"arch": "efficientnet_lite0", "weights": "random", "pooling": "avg", "image_size": 64}
    assert static_feature_dim(lite) == feature_dim(build_backbone(BackboneSpec.from_config(lite)), 64)
    assert static_feature_dim({**lite, "pooling": "none"}) is None  # known after extraction only


def test_a_pca_size_above_the_training_set_stops(tmp_path: Path):
    config = default_config()
    data = make_image_folder(tmp_path / "shoes", per_class=10)
    (data / "red" / "notes.txt").write_text("not counted")
    config["datasets"]["shoes"] = {"source": "folder", "path": str(data)}
    config["grid"].update(datasets=["digits", "shoes"], splits=["60-40", "80-20"], pca=[8, 18, 30, "original"])
    with pytest.raises(ConfigError) as error:
        validate_config(config, SCHEMA)
    message = str(error.value)
    # 3 classes of 10 images: 6 training images each at 60-40
    assert "grid.pca[1]" not in message  # 18 <= 18: allowed
    assert "config key 'grid.pca[2]': 30 is larger than the training set of dataset 'shoes' at split 60-40: " \
           f"at most 18 images (image files in '{data}') (allowed: 1..18 or original)" in message  # fmt: skip
    assert "digits" not in message and "grid.pca[0]" not in message
    # the digits' class sizes are scikit-learn's
    from sklearn.datasets import load_digits

    from cbir.data.sources.digits import DIGITS_CLASS_SIZES

    assert list(DIGITS_CLASS_SIZES) == np.bincount(load_digits().target).tolist()


def test_the_excluded_fraction_has_a_default_and_a_range():
    config = validate_config(default_config(), SCHEMA)
    assert config["data"]["max_excluded_fraction"] == 0.2
    config = default_config()
    del config["data"]
    assert validate_config(config, SCHEMA)["data"]["max_excluded_fraction"] == 0.2


@pytest.mark.parametrize("value", [0, "many", 2.5])
def test_faiss_nlist_takes_a_positive_integer_or_auto(value):
    config = _set(default_config(), ("retrieval", "faiss", "nlist"), value)
    with pytest.raises(ConfigError, match=r"config key 'retrieval.faiss.nlist'.*allowed: integer or auto"):
        validate_config(config, SCHEMA)
    auto = validate_config(_set(default_config(), ("retrieval", "faiss", "nlist"), "auto"), SCHEMA)
    assert auto["retrieval"]["faiss"]["nlist"] == "auto"
