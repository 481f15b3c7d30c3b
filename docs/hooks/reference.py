"""MkDocs hook: the reference pages written from the code at build time, so that they cannot drift.

The command line from cbir.cli's parsers, the configuration from config/schema.yaml, the outputs from the
workflow's rules and the HTTP API from `cbir serve`'s app (with its OpenAPI schema beside it). Their
generators are this folder's *_reference modules; tests/docs/ checks that every flag and key has an entry.
The registries' tables (backbones, embedding spaces) are written where a page has their marker.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the generators beside this hook

import cli_reference
import config_reference
import http_reference
import outputs_reference

GENERATED = {
    "reference/cli.md": cli_reference.page,
    "reference/configuration.md": config_reference.page,
    "reference/outputs.md": outputs_reference.page,
    "reference/http-api.md": http_reference.page,
    f"reference/{http_reference.SCHEMA_FILE}": http_reference.schema_file,
}


# a page's marker comment -> the table written in its place, from the registry that holds the entries
TABLES = {
    "<!-- cbir:backbones -->": "cbir.extraction.registry:backbones_markdown",
    "<!-- cbir:spaces -->": "cbir.fitting.spaces:spaces_markdown",
}


def registry_table(reference: str) -> str:
    module, name = reference.split(":")
    return getattr(importlib.import_module(module), name)()


def on_page_markdown(markdown: str, page, config, files) -> str:
    for marker, reference in TABLES.items():
        if marker in markdown:
            markdown = markdown.replace(marker, registry_table(reference))
    return markdown


def on_files(files: Files, config) -> Files:
    for uri, write in GENERATED.items():
        existing = files.get_file_from_path(uri)
        if existing is not None:
            files.remove(existing)
        try:
            content = write()
        except cli_reference.UndocumentedError as error:
            raise PluginError(f"{uri}: {error}") from None
        files.append(File.generated(config, uri, content=content))
    return files
