"""Files and folders of a photo folder that are no photos: ignored and listed by kind, never excluded.

A phone, camera or NAS export holds more than photos: videos, editors' sidecar files, what the
operating system leaves behind, hidden and thumbnail folders, notes. None of them is a photo that
failed, so none is *excluded* (``excluded.csv``, counted against ``data.max_excluded_fraction``):
they are *ignored*, and listed per folder and kind in ``results/<dataset>/ignored.csv``. Only a
file that claims to be an image (an extension of :data:`cbir.data.images.IMAGE_EXTENSIONS`, any
case) and cannot be used is excluded; and, as before, a symbolic link that cannot be followed,
unless its name puts it in one of the named kinds below.

The kinds, in the order they are checked (the first that matches names it; names compare
case-insensitively):

- ``configured``: a ``data.ignore`` pattern (:class:`IgnoreRules`);
- ``system_folder``: NAS and OS thumbnail, trash and index folders (:data:`SYSTEM_FOLDERS`), whole;
- ``hidden_folder``: any other folder whose name starts with '.', whole;
- ``os_file``: files the OS writes beside photos (:data:`OS_FILES`: .DS_Store, AppleDouble ``._*``,
  Thumbs.db, desktop.ini ...);
- ``hidden_file``: any other file whose name starts with '.';
- ``video``: :data:`VIDEO_EXTENSIONS` (.mov .mp4 .m4v .avi .mkv .3gp ...);
- ``sidecar``: :data:`SIDECAR_EXTENSIONS` (.xmp .aae .json .thm ...): an editor's or phone's notes on a photo;
- ``other``: any other file without an image extension (notes.txt, PDFs, archives, audio);
- ``raw_with_jpeg``: a RAW camera file (:data:`cbir.data.images.RAW_EXTENSIONS`) beside a JPEG or HEIC of the
  same shot, as cameras write them in RAW+JPEG mode: same folder, same name before the extension
  (``IMG_0001.CR2`` and ``IMG_0001.JPG``), that file not ignored itself. The JPEG (the camera's own
  rendering, fast to decode) is indexed, so each shot is one photo; a RAW without such a twin is indexed.
  Judged on the names alone (:meth:`IgnoreRules.file_kinds`): a twin that cannot be read is excluded, and
  its RAW is not taken instead;
- ``outside_classes``: in a labelled dataset, a file at the top, beside the class folders (in no class).

Everything else (an image extension, no rule matching) is inspected: indexed, or excluded with the reason.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from cbir.data.images import HEIF_EXTENSIONS, IMAGE_EXTENSIONS, RAW_EXTENSIONS, display_path, link_problem

CONFIGURED, SYSTEM_FOLDER, HIDDEN_FOLDER = "configured", "system_folder", "hidden_folder"
OS_FILE, HIDDEN_FILE, VIDEO, SIDECAR, OTHER = "os_file", "hidden_file", "video", "sidecar", "other"
RAW_WITH_JPEG, OUTSIDE_CLASSES = "raw_with_jpeg", "outside_classes"
KINDS = {
    CONFIGURED: "matches a data.ignore pattern",
    SYSTEM_FOLDER: "a NAS or OS thumbnail, trash or index folder (ignored whole)",
    HIDDEN_FOLDER: "a hidden folder, its name starting with '.' (ignored whole)",
    OS_FILE: "a file the operating system writes beside photos",
    HIDDEN_FILE: "a hidden file, its name starting with '.'",
    VIDEO: "a video",
    SIDECAR: "a sidecar: an editor's or phone's notes on a photo",
    OTHER: "any other file without an image extension",
    RAW_WITH_JPEG: "a RAW file beside the same shot's JPEG or HEIC (same folder and name), which is indexed",
    OUTSIDE_CLASSES: "a file beside the class folders of a labelled dataset, in no class",
}
# lower-case names; '.thumbnails' and the like are hidden as well, but named here for what they are
SYSTEM_FOLDERS = frozenset({
    "@eadir", "@__thumb", ".@__thumb", "#recycle", "@recycle", "#snapshot", "@recently-snapshot", ".thumbnails",
    ".thumbs", ".appledouble", ".trashes", ".spotlight-v100", ".fseventsd", ".temporaryitems", ".caches",
    "$recycle.bin", "recycler", "system volume information", "lost+found", ".picasaoriginals",
})  # fmt: skip
SYSTEM_FOLDER_GLOBS = (".trash*",)
OS_FILES = frozenset({
    ".ds_store", "thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini", ".picasa.ini", "picasa.ini",
    ".localized", "icon\r", ".nomedia", ".directory", "zbthumbnail.info", ".bridgesort", ".bridgelabelsandratings",
})  # fmt: skip
OS_FILE_GLOBS = ("._*", "~$*")  # AppleDouble resource forks; Office lock files
VIDEO_EXTENSIONS = frozenset({
    ".mov", ".mp4", ".m4v", ".avi", ".mkv", ".3gp", ".3g2", ".mts", ".m2ts", ".ts", ".wmv", ".webm", ".mpg",
    ".mpeg", ".flv", ".vob", ".ogv", ".lrv", ".insv", ".mod", ".tod", ".dv",
})  # fmt: skip
SIDECAR_EXTENSIONS = frozenset({".xmp", ".aae", ".json", ".thm", ".dop", ".pp3", ".on1", ".acr", ".xml"})
RENDERED_EXTENSIONS = frozenset({".jpg", ".jpeg"}) | HEIF_EXTENSIONS  # what a camera writes beside its RAW


@dataclass(frozen=True)
class _Pattern:
    """One ``data.ignore`` glob: on a name, or (holding a '/') on the path inside the dataset; folders only
    when it ends in '/'."""

    text: str
    regex: re.Pattern[str]
    on_path: bool
    folders_only: bool

    @classmethod
    def compile(cls, text: str) -> _Pattern:
        body = text.rstrip("/")
        return cls(text, re.compile(fnmatch.translate(body.lower())), "/" in body, text.endswith("/"))

    def matches(self, relative: str, folder: bool) -> bool:
        if self.folders_only and not folder:
            return False
        subject = relative if self.on_path else relative.rsplit("/", 1)[-1]
        return self.regex.match(subject.lower()) is not None


def pattern_problem(pattern: str) -> str | None:
    """Why a ``data.ignore`` pattern cannot be used (None when it can)."""
    if not pattern.strip("/"):
        return "is empty"
    if pattern.startswith("/") or ".." in PurePosixPath(pattern).parts:
        return "must be a name or a path inside the dataset folder (no leading '/', no '..')"
    return None


class IgnoreRules:
    """The kinds above, with ``extra`` patterns (``data.ignore``) checked first.

    A pattern without '/' is matched against every file's and folder's name (``*_thumb.jpg``,
    ``Private``, ``*.psd``); one with a '/' against the path inside the dataset folder
    (``2019/Screenshots``, ``*/Edited``); one ending in '/' matches folders only (``Private/``).
    Globs as :mod:`fnmatch` reads them (``*``, ``?``, ``[abc]``), case-insensitive; a folder matched
    is ignored whole.
    """

    def __init__(self, extra: Sequence[str] = ()) -> None:
        for pattern in extra:
            problem = pattern_problem(pattern)
            if problem:
                raise ValueError(f"data.ignore pattern '{pattern}' {problem}")
        self.extra = tuple(extra)
        self._patterns = tuple(_Pattern.compile(pattern) for pattern in self.extra)

    def folder_kind(self, relative: str) -> str | None:
        """The kind under which the folder at ``relative`` (a path inside the dataset, '/'-separated) is ignored."""
        if any(pattern.matches(relative, True) for pattern in self._patterns):
            return CONFIGURED
        name = relative.rsplit("/", 1)[-1].lower()
        if name in SYSTEM_FOLDERS or any(fnmatch.fnmatchcase(name, glob) for glob in SYSTEM_FOLDER_GLOBS):
            return SYSTEM_FOLDER
        return HIDDEN_FOLDER if name.startswith(".") else None

    def file_kind(self, relative: str) -> str | None:
        """The kind under which the file at ``relative`` is ignored; None for a file to inspect (an image extension)."""
        if any(pattern.matches(relative, False) for pattern in self._patterns):
            return CONFIGURED
        name = relative.rsplit("/", 1)[-1].lower()
        if name in OS_FILES or any(fnmatch.fnmatchcase(name, glob) for glob in OS_FILE_GLOBS):
            return OS_FILE
        if name.startswith("."):
            return HIDDEN_FILE
        suffix = os.path.splitext(name)[1]
        if suffix in VIDEO_EXTENSIONS:
            return VIDEO
        if suffix in SIDECAR_EXTENSIONS:
            return SIDECAR
        return None if suffix in IMAGE_EXTENSIONS else OTHER

    def file_kinds(self, folder: str, names: Iterable[str]) -> dict[str, str | None]:
        """The kind of each file of ``names`` in the folder at ``folder`` (inside the dataset; '.' its top):
        :meth:`file_kind`'s, or :data:`RAW_WITH_JPEG` for a RAW whose shot is there to inspect as a JPEG or
        HEIC too (:func:`raw_twins`). What lists a folder asks this, so the twin rule holds everywhere."""
        prefix = "" if folder in ("", ".") else folder.rstrip("/") + "/"
        kinds = {name: self.file_kind(prefix + name) for name in names}
        for name in raw_twins(name for name, kind in kinds.items() if kind is None):
            kinds[name] = RAW_WITH_JPEG
        return kinds

    def kind(self, relative: str, folder: bool) -> str | None:
        """The kind of a file or folder at ``relative``, its enclosing folders (inside the dataset) checked first.
        By the name alone: a RAW's twin is not looked for (:meth:`file_kinds`, :func:`ignored_kind` do)."""
        parts = relative.split("/")
        for depth in range(1, len(parts)):
            kind = self.folder_kind("/".join(parts[:depth]))
            if kind:
                return kind
        return self.folder_kind(relative) if folder else self.file_kind(relative)


def raw_twins(names: Iterable[str]) -> frozenset[str]:
    """Among ``names`` (files of one folder), the RAW files whose shot is there as a JPEG or HEIC too: the same
    name before the extension, compared case-insensitively (``IMG_0001.CR2`` beside ``img_0001.jpg`` or
    ``IMG_0001.HEIC``)."""
    split = [(name, *os.path.splitext(name.lower())) for name in names]
    rendered = {stem for _, stem, suffix in split if suffix in RENDERED_EXTENSIONS}
    return frozenset(name for name, stem, suffix in split if suffix in RAW_EXTENSIONS and stem in rendered)


_EXTRA: ContextVar[tuple[str, ...]] = ContextVar("cbir_ignore", default=())


@contextlib.contextmanager
def ignoring(patterns: Iterable[str]) -> Iterator[None]:
    """Inside the block, the folder scans also ignore ``patterns`` (the manifest job's ``data.ignore``)."""
    token = _EXTRA.set(tuple(patterns))
    try:
        yield
    finally:
        _EXTRA.reset(token)


@functools.lru_cache(maxsize=16)
def _rules(extra: tuple[str, ...]) -> IgnoreRules:
    return IgnoreRules(extra)


def current_rules(extra: Sequence[str] | None = None) -> IgnoreRules:
    """The rules with ``extra`` patterns, or (None) those of the :func:`ignoring` block around the call."""
    return _rules(tuple(_EXTRA.get() if extra is None else extra))


def ignored_kind(
    path: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    folder: bool | None = None,
    extra: Sequence[str] | None = None,
) -> str | None:
    """The kind under which ``path`` is ignored, or None: a file to inspect (indexed, or excluded with the reason).

    ``path`` lies inside ``root`` (the dataset folder; its folders inside it are checked too), or is
    a path relative to it, or a bare name. ``folder``: whether it is a folder (None: asked of the file
    system). ``extra``: ``data.ignore`` patterns (None: those of the :func:`ignoring` block). A RAW file is
    :data:`RAW_WITH_JPEG` when its folder, listed, holds its JPEG or HEIC twin.
    """
    path = Path(path)
    relative = path.relative_to(root) if root is not None else path
    location = Path(root) / relative if root is not None else path
    if folder is None:
        folder = location.is_dir()
    rules = current_rules(extra)
    kind = rules.kind(relative.as_posix(), folder)
    if kind is None and not folder and path.suffix.lower() in RAW_EXTENSIONS:
        with contextlib.suppress(OSError):  # no folder to list (a bare name), or one that cannot be: no twin
            names = {entry.name for entry in os.scandir(location.parent)} | {path.name}
            kind = rules.file_kinds(relative.parent.as_posix(), names)[path.name]
    return kind


@dataclass(frozen=True)
class Ignored:
    """An ignored file, or a folder ignored whole with the number of files below it."""

    path: Path
    kind: str
    files: int = 1
    folder: bool = False


@dataclass
class Listing:
    """A folder listed: the files to inspect (sorted), the ignored, and what cannot be listed or followed."""

    files: list[Path] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)


def list_folder(folder: str | Path, root: str | Path | None = None, rules: IgnoreRules | None = None) -> Listing:
    """Every file below ``folder`` (inside the dataset folder ``root``, default ``folder``) sorted into those to
    inspect, the ignored (:class:`IgnoreRules`, default :func:`current_rules`) and the problems: a folder that
    cannot be listed, a symbolic link that cannot be followed (broken, or looping back into a folder being
    listed). Links to folders are followed; a link is judged by its own name."""
    folder = Path(folder)
    root = folder if root is None else Path(root)
    rules = current_rules() if rules is None else rules
    listing = Listing()
    pending = [(folder, frozenset({folder.resolve()}))]
    while pending:
        current, chain = pending.pop()
        try:
            entries = sorted(current.iterdir())
        except OSError as error:
            listing.problems.append((current, f"cannot list: {error}"))
            continue
        files: list[tuple[Path, str | None]] = []
        for path in entries:
            relative = path.relative_to(root).as_posix()
            problem = link_problem(path)
            if problem is None and path.is_dir():
                kind = rules.folder_kind(relative)
                if kind:
                    listing.ignored.append(Ignored(path, kind, count_files(path), folder=True))
                    continue
                real = path.resolve()
                if not any(real == seen or seen.is_relative_to(real) for seen in chain):
                    pending.append((path, chain | {real}))
                    continue
                problem = f"symbolic link loop (back to '{display_path(real)}')"
            files.append((path, problem))
        kinds = rules.file_kinds(current.relative_to(root).as_posix(), [path.name for path, _ in files])
        for path, problem in files:
            kind = kinds[path.name]
            if kind and not (problem and kind == OTHER):  # a link without a photo's name that fails: as before
                listing.ignored.append(Ignored(path, kind))
            elif problem:
                listing.problems.append((path, problem))
            else:
                listing.files.append(path)
    listing.files.sort()
    return listing


def count_files(folder: Path) -> int:
    """Files below ``folder``, links not followed (what an ignored folder holds)."""
    return sum(len(files) for _, _, files in os.walk(folder))


IGNORED_COLUMNS = ["folder", "kind", "files", "example"]


def ignored_table(entries: Iterable[Ignored], root: str | Path) -> pd.DataFrame:
    """``ignored.csv``: per folder (inside ``root``; '.' is its top) and kind, the files ignored and one example
    name (a folder ignored whole: its name with a '/', and the files below it)."""
    groups: dict[tuple[str, str], list[int | str]] = {}
    for entry in sorted(entries, key=lambda entry: entry.path):
        folder = display_path(entry.path.parent.relative_to(root).as_posix())
        name = display_path(entry.path.name) + ("/" if entry.folder else "")
        group = groups.setdefault((folder, entry.kind), [0, name])
        group[0] = int(group[0]) + entry.files
    rows = [[folder, kind, files, example] for (folder, kind), (files, example) in sorted(groups.items())]
    return pd.DataFrame(rows, columns=IGNORED_COLUMNS).astype({"files": int})


def ignored_summary(table: pd.DataFrame) -> str:
    """The ignored files per kind, for a log line: '3 video, 2 sidecar, 1 os_file' ('' when none)."""
    if table.empty:
        return ""
    per_kind = table.groupby("kind")["files"].sum().sort_values(ascending=False, kind="stable")
    return ", ".join(f"{int(count)} {kind}" for kind, count in per_kind.items())
