"""The registry of dataset sources: every ``datasets.<name>.source`` value, by name."""

from __future__ import annotations

from cbir.data.manifest import DatasetError
from cbir.data.sources.source import Source

REQUIRED_METHODS = ("missing_reason", "manifest")  # what a source must implement itself

SOURCES: dict[str, Source] = {}


def register_source(source: Source) -> Source:
    """Add ``source`` to the registry under its name (and so to the config schema's ``source`` values).

    Refused: an object that is not a :class:`Source`, one without a name or config keys, a name
    already registered, and a source that does not implement its own presence check and manifest.
    """
    if not isinstance(source, Source):
        raise TypeError(f"{source!r} is not a cbir.data.sources.Source")
    name = getattr(source, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{type(source).__name__} has no name")
    if not isinstance(getattr(source, "keys", None), frozenset):
        raise TypeError(f"dataset source '{name}' does not declare its config keys (a frozenset)")
    unimplemented = [
        method
        for method in REQUIRED_METHODS
        if not callable(getattr(source, method, None))
        or getattr(getattr(source, method), "__isabstractmethod__", False)
    ]
    if unimplemented:
        raise TypeError(f"dataset source '{name}' does not implement {', '.join(unimplemented)}")
    if name in SOURCES:
        raise ValueError(f"dataset source '{name}' is already registered ({SOURCES[name]!r})")
    SOURCES[name] = source
    return source


def get_source(name: str) -> Source:
    """The registered source called ``name``; an unknown name is a DatasetError listing the known ones."""
    try:
        return SOURCES[name]
    except KeyError:
        raise DatasetError(f"unknown dataset source '{name}' (known: {', '.join(SOURCES)})") from None


def official_split_sources() -> list[str]:
    """The sources whose datasets carry their own train/test split."""
    return [name for name, source in SOURCES.items() if source.official_split]
