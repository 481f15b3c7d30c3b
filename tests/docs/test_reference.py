"""The reference pages are written from the code: every flag and config key has its entry, or the build fails."""

from __future__ import annotations

import argparse
import copy
import re

import cli_reference
import config_reference
import http_reference
import outputs_reference
import pytest

from cbir import layout


def anchors(page: str) -> set[str]:
    return set(re.findall(r"\{#([^}\s]+)\}", page))


def test_every_cli_argument_has_an_entry_with_its_help():
    page = cli_reference.page()
    found = anchors(page)
    checked = 0
    for command, parser in cli_reference.commands().items():
        assert f"cbir-{command}" in found
        for action in cli_reference.arguments(parser):
            anchor = cli_reference.flag_anchor(command, action)
            assert anchor in found, f"cbir {command}: {action.option_strings or action.dest} has no entry"
            (row,) = [line for line in page.splitlines() if f"{{#{anchor}}}" in line]
            assert " ".join(action.help.split())[:40].replace("|", "\\|") in row
            checked += 1
    assert checked > 40  # query, serve, duplicates and index: every argument, not a sample
    assert "cbir-index--labels" in found and "cbir-serve--token" in found and "cbir-query-photo" in found


def test_a_flag_without_help_fails_the_reference(monkeypatch):
    def parser_with_a_bare_flag() -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog="cbir")
        commands = parser.add_subparsers(dest="command")
        commands.add_parser("index", help="index").add_argument("--undocumented-flag")
        return parser

    monkeypatch.setattr(cli_reference, "build_parser", parser_with_a_bare_flag)
    with pytest.raises(cli_reference.UndocumentedError, match="cbir index --undocumented-flag"):
        cli_reference.page()


def test_every_config_key_has_an_entry_with_type_default_and_description():
    schema = config_reference.load_schema()
    page = config_reference.page(schema)
    found = anchors(page)
    paths = [key.path for key in config_reference.keys(schema)]
    assert len(paths) > 100
    for expected in ("seed", "grid.pca", "datasets.*.source", "backbones.*.finetune.loss", "retrieval.eval_queries"):
        assert expected in paths
    for key in config_reference.keys(schema):
        assert key.path in found, f"config key {key.path} has no entry"
        if "." in key.path:
            (row,) = [line for line in page.splitlines() if line.startswith(f"| [](){{#{key.path}}}")]
            assert key.description[:40].replace("|", "\\|") in row
            if "default" in key.node:
                assert key.default in row
    row = next(line for line in page.splitlines() if "{#retrieval.metric}" in line)
    assert '`"euclidean"`, `"cosine"`' in row and '| `"euclidean"` |' in row


def test_a_config_key_without_description_fails_the_reference():
    schema = copy.deepcopy(config_reference.load_schema())
    schema["properties"]["retrieval"]["properties"]["undocumented_key"] = {"type": "integer", "default": 1}
    assert config_reference.undocumented(schema) == ["retrieval.undocumented_key"]
    with pytest.raises(cli_reference.UndocumentedError, match=r"retrieval\.undocumented_key"):
        config_reference.page(schema)


def test_every_key_of_the_shipped_configs_is_in_the_reference():
    import yaml

    paths = {key.path for key in config_reference.keys(config_reference.load_schema())}

    def walk(node, prefix=""):
        for name, value in node.items():
            path = f"{prefix}{name}"
            named = prefix in ("datasets.", "backbones.")
            yield f"{prefix}*" if named else path
            if isinstance(value, dict) and path not in ("paper.datasets", "validation.candidates"):
                yield from walk(value, f"{prefix}*." if named else f"{path}.")

    for config in sorted(config_reference.SCHEMA.parent.glob("*.yaml")):
        if config.name == "schema.yaml":
            continue
        for path in walk(yaml.safe_load(config.read_text()) or {}):
            assert path in paths or path in ("datasets.*", "backbones.*"), f"{config.name}: {path}"


@pytest.mark.workflow
def test_the_outputs_page_lists_every_rule_with_its_files():
    rules = outputs_reference.rules()
    names = {rule.name for rule in rules}
    stages = {"manifest", "split", "extract_features", "fit_pca", "cluster", "train_mlp", "evaluate", "summarize"}
    assert stages <= names
    for rule in rules:
        assert rule.docstring, f"rule {rule.name} has no docstring"
    page = outputs_reference.page(rules)
    assert f"`{layout.MANIFEST}`" in page and f"`{layout.FEATURES}`" in page
    assert "{dataset," not in page  # wildcard constraints are left out


def test_the_http_page_has_every_operation_of_the_served_schema():
    schema = http_reference.openapi()
    page = http_reference.page(schema)
    operations = [(method, path) for path, methods in schema["paths"].items() for method in methods]
    assert ("post", "/api/query") in operations
    for method, path in operations:
        assert f"## `{method.upper()} {path}`" in page
    for field in ("image", "test_id", "gallery_id", "relevant_ids", "irrelevant_ids"):
        assert f"| `{field}` | form |" in page
    assert '"openapi"' in http_reference.schema_file(schema)


@pytest.mark.parametrize(
    ("marker", "page"),
    [
        ("<!-- cbir:backbones -->", "how-to/add-a-backbone.md"),
        ("<!-- cbir:spaces -->", "explanation/embedding-spaces.md"),
    ],
)
def test_the_registries_tables_are_written_into_their_pages(marker: str, page: str):
    import reference

    source = (reference.Path(reference.__file__).parents[1] / page).read_text()
    assert marker in source, f"docs/{page} lost the marker of its generated table"
    written = reference.on_page_markdown(source, page=None, config=None, files=None)
    assert marker not in written and reference.registry_table(reference.TABLES[marker]) in written
