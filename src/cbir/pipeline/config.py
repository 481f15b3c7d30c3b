"""Configuration: the schema's validation, with messages that name the key, and the checks across keys."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from cbir.data.sources import SOURCES, entry_problems, official_split_sources
from cbir.data.split import ALL, OFFICIAL
from cbir.extraction.pooling import POOLINGS
from cbir.extraction.registry import BACKBONES, get_backbone, weights_problem
from cbir.fitting.spaces import SPACES
from cbir.pipeline.grid import dataset_is_labelled, pca_size_problems
from cbir.plugins import PluginError, load_plugin
from cbir.report.paper import paper_datasets


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and what is allowed."""


def load_schema(path: str | Path) -> dict[str, Any]:
    with open(path) as f:
        return _registry_enums(yaml.safe_load(f))


def _registry_enums(schema: dict[str, Any]) -> dict[str, Any]:
    """Fill in the schema's enums that follow from the registries (architectures, poolings, dataset sources)
    and from the paper's figures (its datasets)."""
    backbone = schema["properties"]["backbones"]["additionalProperties"]["properties"]
    backbone["arch"]["enum"] = list(BACKBONES)
    backbone["pooling"]["enum"] = list(POOLINGS)
    schema["properties"]["datasets"]["additionalProperties"]["properties"]["source"]["enum"] = list(SOURCES)
    schema["properties"]["paper"]["properties"]["datasets"]["additionalProperties"]["enum"] = paper_datasets()
    schema["properties"]["grid"]["properties"]["embeddings"]["items"]["enum"] = list(SPACES)
    return schema


def _load_config_plugins(config: Mapping[str, Any]) -> None:
    """Import the config's plugins, so that the backbones and sources they register are known to the checks."""
    plugins = config.get("plugins", [])
    if not isinstance(plugins, list):
        return  # the schema reports it
    for i, ref in enumerate(plugins):
        if isinstance(ref, str):
            try:
                load_plugin(ref)
            except PluginError as error:
                raise ConfigError(f"invalid configuration:\n  config key 'plugins[{i}]': {error}") from None


def _key_path(parts: Iterator[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _allowed(error: jsonschema.ValidationError) -> str:
    schema = error.schema if isinstance(error.schema, dict) else {}
    if "enum" in schema:
        return "allowed: " + ", ".join(map(str, schema["enum"]))
    if error.validator == "oneOf":
        options = []
        for sub in schema.get("oneOf", []):
            options.append(", ".join(map(str, sub["enum"])) if "enum" in sub else sub.get("type", "?"))
        return "allowed: " + " or ".join(options)
    if "description" in schema:
        return str(schema["description"]).strip()
    return ""


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = ", ".join(sorted(set(error.instance) - set(allowed)))
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"config key '{key}': unknown key(s) {extra}{hint}"
    allowed = _allowed(error)
    return f"config key '{key}': {error.message}" + (f" ({allowed})" if allowed else "")


def _fill_defaults(instance: Any, schema: Mapping[str, Any], root: Mapping[str, Any]) -> None:
    """Insert the schema's defaults into ``instance`` (after it has validated)."""
    if "$ref" in schema:
        schema = root["definitions"][schema["$ref"].split("/")[-1]]
    if isinstance(instance, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in instance and "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
            if key in instance:
                _fill_defaults(instance[key], sub, root)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in set(instance) - set(schema.get("properties", {})):
                _fill_defaults(instance[key], extra, root)


def validate_config(config: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """Return a validated copy of ``config`` with defaults filled in, or raise ConfigError."""
    config = copy.deepcopy(dict(config))
    _load_config_plugins(config)
    schema = _registry_enums(copy.deepcopy(dict(schema)))  # a plugin may have added entries
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(map(_describe, errors)))
    _check_dataset_entries(config)  # before defaults fill keys of other sources in
    _fill_defaults(config, schema, schema)
    _check_semantics(config)
    return _sorted_keys(config)


def _sorted_keys(value: Any) -> Any:
    """Mappings with their keys sorted (lists keep their order).

    Rule params built from the config are compared by Snakemake as written: without this, the
    same settings written in another key order would count as changed and rebuild everything.
    """
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(item) for item in value]
    return value


def _check_dataset_entries(config: Mapping[str, Any]) -> None:
    problems = [p for name, entry in config["datasets"].items() for p in entry_problems(name, entry)]
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _check_semantics(config: Mapping[str, Any]) -> None:
    problems = []
    grid = config["grid"]
    for i, split in enumerate(grid["splits"]):
        if split == OFFICIAL:
            official = official_split_sources()
            without = [
                name for name in grid["datasets"] if config["datasets"].get(name, {}).get("source") not in official
            ]
            if without:
                problems.append(
                    f"config key 'grid.splits[{i}]': 'official' needs datasets with their own train/test split "
                    f"(sources {', '.join(official)}); {', '.join(without)} has none"
                )
            continue
        if split == ALL:
            labelled = [name for name in grid["datasets"] if dataset_is_labelled(config, name)]
            if labelled:
                problems.append(
                    f"config key 'grid.splits[{i}]': 'all' (every image in the gallery, nothing held out) is for "
                    f"datasets without labels (labels: none); {', '.join(labelled)} has labels: use a ratio split"
                )
            continue
        train, test = (int(p) for p in split.split("-"))
        if train + test != 100 or train == 0 or test == 0:
            problems.append(
                f"config key 'grid.splits[{i}]': '{split}' must be TRAIN-TEST percentages "
                "that are both above 0 and sum to 100, such as 80-20"
            )
    for name, entry in config["datasets"].items():
        if "clusters" in entry and entry.get("labels") != "none":
            problems.append(
                f"config key 'datasets.{name}.clusters': k-means over the whole collection is for a dataset "
                "without labels (labels: none); a labelled dataset is clustered per class with grid.k"
            )
    for kind in ("datasets", "backbones"):
        for i, name in enumerate(grid[kind]):
            if name not in config[kind]:
                problems.append(
                    f"config key 'grid.{kind}[{i}]': '{name}' is not defined under '{kind}' "
                    f"(defined: {', '.join(sorted(config[kind])) or 'none'})"
                )
    problems.extend(weights_problems(config))
    problems.extend(backbone_setting_problems(config))
    problems.extend(finetune_problems(config))
    extraction = config["extraction"]
    if extraction["engine"] != "torch" and extraction["precision"] == "fp16":
        problems.append(
            f"config key 'extraction.precision': fp16 runs on CUDA with engine torch, not with engine "
            f"{extraction['engine']} (allowed there: auto, fp32, bf16, int8)"
        )
    if extraction["engine"] == "openvino" and extraction["device"] == "cuda":
        problems.append("config key 'extraction.engine': openvino runs on the CPU; with device cuda use torch or auto")
    if extraction["engine"] == "torch" and extraction["precision"] == "int8":
        problems.append("config key 'extraction.precision': int8 needs extraction.engine openvino or auto")
    for name in grid["datasets"]:
        entry = config["datasets"].get(name, {})
        source = SOURCES.get(entry.get("source", ""))
        if source is not None and source.path_required and "path" not in entry:
            problems.append(f"config key 'datasets.{name}.path': required when source is '{source.name}'")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    problems = pca_size_problems(config)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def weights_problems(config: Mapping[str, Any]) -> list[str]:
    """Backbone entries whose ``weights`` name neither weights of their architecture nor a state-dict file."""
    return [
        f"config key 'backbones.{name}.weights': {problem}"
        for name, entry in config["backbones"].items()
        if (problem := weights_problem(entry["arch"], entry["weights"]))
    ]


def backbone_setting_problems(config: Mapping[str, Any]) -> list[str]:
    """Backbone entries with an image size their network cannot take, or a gem_p without GeM pooling."""
    problems = []
    for name, entry in config["backbones"].items():
        if problem := get_backbone(entry["arch"]).image_size_problem(int(entry["image_size"])):
            problems.append(f"config key 'backbones.{name}.image_size': {problem}")
        if "gem_p" in entry and entry["pooling"] != "gem":
            problems.append(
                f"config key 'backbones.{name}.gem_p': GeM's power is used with pooling: gem only, and this "
                f"backbone pools with {entry['pooling']}: remove gem_p or set pooling: gem"
            )
    return problems


def finetune_problems(config: Mapping[str, Any]) -> list[str]:
    """A fine-tuned backbone (``finetune:``) in a grid with a collection without labels: it learns from labels."""
    backbones = config["backbones"]
    tuned = [name for name in config["grid"]["backbones"] if backbones.get(name, {}).get("finetune") is not None]
    defined = [name for name in config["grid"]["datasets"] if name in config["datasets"]]  # others: named elsewhere
    collections = [name for name in defined if not dataset_is_labelled(config, name)]
    if not tuned or not collections:
        return []
    return [
        f"config key 'backbones.{tuned[0]}.finetune': fine-tuning learns from the classes, and "
        f"{', '.join(collections)} {'has' if len(collections) == 1 else 'have'} no labels: use a backbone without "
        "finetune for a collection, or give it labels (labels: folders)"
    ]
