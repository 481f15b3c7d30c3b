"""The HTTP API reference page and its OpenAPI schema, written from `cbir serve`'s app (cbir.serve.app)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from config_reference import resolve_ref  # a sibling module of docs/hooks

SCHEMA_FILE = "openapi.json"  # written beside the page, the same schema `cbir serve` answers at /openapi.json


@functools.cache  # the page and the schema file are written from one app
def openapi() -> dict[str, Any]:
    """The app's OpenAPI schema; the routes do not depend on the cell, so none is loaded."""
    from cbir.serve.app import create_app
    from cbir.serve.settings import ServeSettings

    settings = ServeSettings(model=Path("cell-not-loaded"))
    return create_app(settings, served=SimpleNamespace(settings=settings)).openapi()


def _type(node: dict[str, Any], schema: dict[str, Any]) -> str:
    if "$ref" in node:
        return node["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in node:
        return " or ".join(_type(option, schema) for option in node["anyOf"])
    if node.get("type") == "array":
        return "list of " + _type(node.get("items", {}), schema)
    return str(node.get("format") or node.get("type", "any"))


def _cell(text: Any) -> str:
    return " ".join(str(text or "").split()).replace("|", "\\|")


def _parameters(operation: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    rows = [
        f"| `{p['name']}` | {p['in']} | {_type(p.get('schema', {}), schema)} | {'yes' if p.get('required') else ''} "
        f"| {_cell(p.get('description') or p.get('schema', {}).get('description'))} |"
        for p in operation.get("parameters", [])
    ]
    for media in operation.get("requestBody", {}).get("content", {}).values():
        body = resolve_ref(media.get("schema", {}), schema)
        required = set(body.get("required", []))
        for name, field in body.get("properties", {}).items():
            rows.append(
                f"| `{name}` | form | {_type(field, schema)} | {'yes' if name in required else ''} "
                f"| {_cell(field.get('description'))} |"
            )
    if not rows:
        return []
    return ["| parameter | in | type | required | meaning |", "| --- | --- | --- | --- | --- |", *rows, ""]


def _responses(operation: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    rows = []
    for status, response in operation.get("responses", {}).items():
        bodies = [_type(media.get("schema", {}), schema) for media in response.get("content", {}).values() if media]
        rows.append(f"| {status} | {_cell(response.get('description'))} | {', '.join(b for b in bodies if b)} |")
    return ["| status | meaning | body |", "| --- | --- | --- |", *rows, ""]


def _models(schema: dict[str, Any]) -> list[str]:
    lines = ["## Schemas", ""]
    for name, model in schema.get("components", {}).get("schemas", {}).items():
        if name.startswith("Body_") or name in ("HTTPValidationError", "ValidationError"):
            continue  # the form fields are listed with their operation; FastAPI's own error shape is not used
        lines += [f"### `{name}` {{#schema-{name.lower()}}}", "", _cell(model.get("description")), ""]
        lines += ["| field | type | meaning |", "| --- | --- | --- |"]
        lines += [
            f"| `{field}` | {_type(value, schema)} | {_cell(value.get('description') or value.get('title'))} |"
            for field, value in model.get("properties", {}).items()
        ]
        lines.append("")
    return lines


def page(schema: dict[str, Any] | None = None) -> str:
    schema = openapi() if schema is None else schema
    lines = [
        "# HTTP API",
        "",
        f"`cbir serve` answers a JSON API beside its page, described by the OpenAPI schema "
        f"[`{SCHEMA_FILE}`]({SCHEMA_FILE}) (version {schema['info']['version']}): the same schema a running",
        "server answers at `/openapi.json`, with an interactive page at `/docs` served from the server itself.",
        "This page is written from the app when the site is built.",
        "",
        _cell(schema["info"].get("description")),
        "",
        "With `--token` (or `CBIR_TOKEN`) every request needs `Authorization: Bearer <token>` or the cookie of a",
        'login at `/login`; without it the API answers 401. Errors answer `{"detail": "..."}` with one line',
        "saying what was wrong. Deploying behind a proxy: [Serve behind a proxy](../how-to/serve-behind-a-proxy.md).",
        "",
    ]
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            anchor = f"{method}-{path}".strip("/").replace("/", "-").replace("{", "").replace("}", "")
            lines += [f"## `{method.upper()} {path}` {{#{anchor}}}", "", _cell(operation.get("summary")), ""]
            lines += [_cell(operation.get("description")), ""] if operation.get("description") else []
            lines += _parameters(operation, schema) + _responses(operation, schema)
    return "\n".join(lines + _models(schema))


def schema_file(schema: dict[str, Any] | None = None) -> str:
    return json.dumps(openapi() if schema is None else schema, indent=2) + "\n"
