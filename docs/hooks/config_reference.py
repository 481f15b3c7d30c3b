"""The configuration reference page, written from the workflow's schema (config/schema.yaml)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SCHEMA = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"
DEFAULT_CONFIG = SCHEMA.parent / "config.yaml"  # the embedded default: its values are what a run starts from
CATALOGUES = ("datasets", "backbones", "paper")  # the default's entries are examples, not defaults
MISSING = object()
ANY_NAME = "*"  # the key path's part for an entry of a map of names (datasets.*.source)


@dataclass(frozen=True)
class Key:
    """One key of the configuration: where it is, what it takes and what it means."""

    path: str
    node: dict[str, Any]
    schema: dict[str, Any]
    embedded: dict[str, Any] | None = None  # config/config.yaml

    @property
    def description(self) -> str:
        return " ".join(str(self.node.get("description", "")).split())

    @property
    def kind(self) -> str:
        return describe_type(self.node, self.schema)

    @property
    def default(self) -> str:
        """config/config.yaml's value where it sets the key (the catalogues' entries aside), else the schema's; none
        for a section whose keys have their own."""
        if "properties" in self.node:
            return ""
        value: Any = self.embedded
        for part in self.path.split("."):
            if not isinstance(value, dict) or part not in value or self.path.split(".")[0] in CATALOGUES:
                value = self.node.get("default", MISSING)
                break
            value = value[part]
        return "" if value is MISSING else f"`{json.dumps(value)}`"


def load_schema(path: Path = SCHEMA) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def resolve_ref(node: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``node`` with its ``$ref`` (a JSON pointer into ``schema``) followed, its own other keys kept."""
    while "$ref" in node:
        target: Any = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _named_entries(node: dict[str, Any]) -> dict[str, Any] | None:
    """The schema of each entry of a map of names (datasets, backbones), where it has keys of its own."""
    entries = node.get("additionalProperties")
    return entries if isinstance(entries, dict) and "properties" in entries else None


def keys(
    schema: dict[str, Any], node: dict[str, Any] | None = None, prefix: str = "", embedded: dict | None = None
) -> Iterator[Key]:
    """Every key, depth first in the schema's order: a section, then its keys."""
    node = schema if node is None else node
    if embedded is None:
        embedded = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8")) or {}
    for name, child in (node.get("properties") or {}).items():
        path = f"{prefix}{name}"
        resolved = resolve_ref(child, schema)
        yield Key(path, resolved, schema, embedded)
        yield from keys(schema, resolved, path + ".", embedded)
        entries = _named_entries(resolved)
        if entries is not None:
            yield from keys(schema, entries, f"{path}.{ANY_NAME}.", embedded)


def describe_type(node: dict[str, Any], schema: dict[str, Any]) -> str:
    """A reader's word for what a key takes: 'integer ≥ 1', 'one of ...', 'list of string', ..."""
    node = resolve_ref(node, schema)
    for combiner in ("oneOf", "anyOf"):
        if combiner in node:
            return " or ".join(describe_type(option, schema) for option in node[combiner])
    if "enum" in node:
        return "one of " + ", ".join(f"`{json.dumps(value)}`" for value in node["enum"])
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    kind = node.get("type", "any")
    if isinstance(kind, list):
        kind = " or ".join(kind)
    if kind == "array" and isinstance(node.get("items"), dict):
        kind = "list of " + describe_type(node["items"], schema)
    if kind == "object" and _named_entries(node) is not None:
        kind = "map of names to entries"
    bounds = [
        f"{symbol} {node[word]}"
        for word, symbol in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))
        if word in node
    ]
    return " ".join([kind, ", ".join(bounds)]).strip()


def undocumented(schema: dict[str, Any]) -> list[str]:
    return [key.path for key in keys(schema) if not key.description]


def page(schema: dict[str, Any] | None = None) -> str:
    from cli_reference import UndocumentedError  # a sibling module of docs/hooks

    schema = load_schema() if schema is None else schema
    missing = undocumented(schema)
    if missing:
        raise UndocumentedError("config keys without a description in config/schema.yaml: " + ", ".join(missing))
    lines = [
        "# Configuration",
        "",
        "Every key of the workflow's configuration, written from `config/schema.yaml` when the site is built.",
        "The workflow checks a config against the same schema before any job starts: a wrong value stops",
        "the run with a message naming the key and what it allows. A key your config leaves out takes its",
        "default: the value in `config/config.yaml`, the embedded default every run starts from, else the",
        "schema's own.",
        f"`{ANY_NAME}` in a key stands for a name you choose (a dataset's or a backbone's).",
        "How to pass a config, and the configs that ship with cbir, are in `config/README.md` beside them.",
        "",
        " ".join(str(schema.get("description", "")).split()),
        "",
    ]
    sections: dict[str, list[Key]] = {}
    for key in keys(schema):
        sections.setdefault(key.path.split(".")[0], []).append(key)
    for section, (head, *rest) in sections.items():
        lines += [f"## `{section}` {{#{section}}}", "", head.description, "", f"Takes: {head.kind}."]
        lines += [f"Default: {head.default}.", ""] if head.default else [""]
        if rest:
            lines += ["| key | takes | default | meaning |", "| --- | --- | --- | --- |"]
            for key in rest:
                cells = (f"[](){{#{key.path}}}`{key.path}`", key.kind, key.default, key.description)
                lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
            lines.append("")
    return "\n".join(lines)
