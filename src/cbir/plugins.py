"""Plugins: a module or a ``.py`` file, named in the config's ``plugins``, that registers backbones or sources.

A plugin calls :func:`cbir.extraction.registry.register_backbone` or :func:`cbir.data.sources.register_source`
when it is imported (docs, "Plugin API"). The workflow imports the config's plugins before it
checks the config, and again in every rule script; an entry remembers the plugin that made it, so
that ``cbir query`` and ``cbir serve`` can import it again for a cell built with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

_loaded: set[str] = set()
_importing: list[str] = []


class PluginError(ImportError):
    """A plugin cannot be imported; the message names it and the error."""


def current_plugin() -> str | None:
    """The plugin being imported now (a module name, or a file's absolute path), or None: cbir's own entries."""
    return _importing[-1] if _importing else None


@contextlib.contextmanager
def _importing_plugin(ref: str) -> Iterator[None]:
    _importing.append(ref)
    try:
        yield
    finally:
        _importing.pop()


def _import_file(path: Path) -> None:
    name = f"cbir_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin '{path}' is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def load_plugin(ref: str) -> None:
    """Import one plugin: a module name (``mypackage.cbir_plugin``) or the path of a ``.py`` file."""
    key = str(Path(ref).resolve()) if ref.endswith(".py") else ref
    if key in _loaded:
        return
    with _importing_plugin(key):
        try:
            if ref.endswith(".py"):
                if not Path(ref).is_file():
                    raise PluginError(f"plugin file '{ref}' does not exist")
                _import_file(Path(ref).resolve())
            else:
                importlib.import_module(ref)
        except PluginError:
            raise
        except Exception as error:
            raise PluginError(f"cannot import plugin '{ref}': {type(error).__name__}: {error}") from error
    _loaded.add(key)


def load_plugins(refs: Iterable[str]) -> None:
    for ref in refs:
        load_plugin(ref)
