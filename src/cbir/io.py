"""Artifact I/O: HDF5 files written atomically and stamped with provenance metadata."""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import os
import platform
import shutil
import signal
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cbir import __version__

STRING_DTYPE = h5py.string_dtype(encoding="utf-8")
PARTIAL_MARK = ".partial-"  # temporary files are named .<name>.partial-<pid>

log = logging.getLogger(__name__)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers, recorded in every artifact."""
    versions = {
        "cbir": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "scikit-learn": metadata.version("scikit-learn"),
        "pandas": metadata.version("pandas"),
        "pillow": metadata.version("pillow"),
    }
    with contextlib.suppress(metadata.PackageNotFoundError):  # decodes JPEGs where installed (cbir.data.images)
        versions["simplejpeg"] = metadata.version("simplejpeg")
    # torch is slow to import: record it only where the stage already uses it
    for name in ("torch", "torchvision"):
        if name in sys.modules:
            versions[name] = str(getattr(sys.modules[name], "__version__", "unknown"))
    return versions


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, expected_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary sibling path (file or folder) that becomes ``path`` only if the block succeeds.

    The temporary file is flushed to the disk (fsync) before it is renamed, and the rename before
    this returns, so that neither a killed job nor a power cut leaves a half-written file under the
    final name. A job killed outright (SIGKILL, power loss) leaves its temporary file behind: the
    next write of the same path removes it (see :func:`remove_stale_partials`).

    A full disk is a :class:`DiskFullError` naming the path and the space it needs: at once where
    ``expected_bytes`` (the size of what will be written) is more than the free space, else when a
    write fails for lack of space.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(final)
    if expected_bytes is not None and expected_bytes > free_bytes(final.parent):
        raise DiskFullError(final, needs=expected_bytes)
    tmp = final.with_name(f".{final.name}{PARTIAL_MARK}{os.getpid()}")
    try:
        yield tmp
        flush_to_disk(tmp)
        os.replace(tmp, final)
        _fsync(final.parent)  # the rename itself
    except OSError as error:
        if not is_disk_full(error) or isinstance(error, DiskFullError):
            raise
        written = _size(tmp)
        _remove(tmp)  # before the free space is measured
        raise DiskFullError(final, needs=expected_bytes, written=written) from error
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A file could not be written for lack of space; the message names it, the space it needs and the space free.

    An OSError (errno ENOSPC), so that handlers of file errors still take it; its message is one line for the user.
    """

    def __init__(self, path: str | os.PathLike[str], *, needs: int | None = None, written: int | None = None) -> None:
        self.path = Path(path)
        free = free_bytes(self.path.parent)
        if needs is not None:
            need = f"needs about {_megabytes(needs)}"
        elif written:
            need = f"needs more than {_megabytes(written)}"
        else:
            need = "needs more space"
        message = (
            f"no space left on the device for '{self.path}': it {need} and {_megabytes(free)} is free there; "
            "free some space and run the same command again"
        )
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return str(self.strerror)


def is_disk_full(error: BaseException) -> bool:
    """Whether an error, or one it was raised from, is a write that ran out of space (h5py's included)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and (seen.errno in DISK_FULL_ERRNOS or "No space left on device" in str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def free_bytes(folder: str | os.PathLike[str]) -> int:
    """The space free to this process on the device of ``folder`` (or of its nearest existing parent)."""
    place = Path(folder).absolute()
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        return shutil.disk_usage(place).free
    except OSError:
        return 0


def _megabytes(n_bytes: int) -> str:
    if n_bytes < 1e3:
        return f"{n_bytes} B"
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1e6 else f"{n_bytes / 1e3:.0f} kB"


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size if path.exists() else 0
    except OSError:
        return 0


def flush_to_disk(path: str | os.PathLike[str]) -> None:
    """fsync a file, or every file and folder below a folder, so that a rename after it cannot expose lost data."""
    path = Path(path)
    if not path.is_dir():
        _fsync(path)
        return
    if _syncfs(path):  # one call for a whole tree (an export of 60,000 images), where Linux offers it
        return
    for folder, _, files in os.walk(path):
        for name in files:
            _fsync(Path(folder) / name)
        _fsync(Path(folder))


def _syncfs(folder: Path) -> bool:
    """Linux's syncfs(2) on the file system holding ``folder``; False where it is not available."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # only here: the rare folder output

    fd = os.open(folder, os.O_RDONLY)
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs(fd) == 0
    except (AttributeError, OSError):
        return False
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    """fsync one file or folder; a file system that cannot sync a folder (some network ones) is let be."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except IsADirectoryError:  # not on Linux; kept for other systems
        return
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF) or not path.is_dir():
            raise
    finally:
        os.close(fd)


def partial_paths(path: str | os.PathLike[str]) -> list[Path]:
    """Temporary files (or folders) left by writes of ``path`` that did not finish."""
    final = Path(path)
    return sorted(final.parent.glob(f".{glob.escape(final.name)}{PARTIAL_MARK}*"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_partials(path: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files of ``path`` whose writer is gone; returns what was removed.

    Only one job writes an output at a time (Snakemake locks its outputs), so a temporary file
    whose process id is not running here is what a killed job left behind.
    """
    removed = []
    for partial in partial_paths(path):
        pid = partial.name.rpartition(PARTIAL_MARK)[2]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue
        if partial.is_dir() and not partial.is_symlink():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
        removed.append(partial)
        log.info("removed '%s', left by an interrupted write of '%s'", partial, path)
    return removed


class Terminated(BaseException):
    """The process received SIGTERM; raised so that ``finally`` blocks and context managers clean up.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` handler takes it for
    an error of the file being processed.
    """


@contextlib.contextmanager
def terminate_cleanly() -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`Terminated` instead of ending the process at once.

    Python's default on SIGTERM is to die without unwinding, which would leave temporary files
    behind; this lets :func:`atomic_path` remove them. Only the main thread can install signal
    handlers; elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_attrs(node: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    """Store attributes; dicts and lists are stored as JSON strings so any reader can parse them."""
    for key, value in attrs.items():
        if isinstance(value, (dict, list, tuple)):
            node.attrs[key] = json.dumps(value)
        elif value is None:
            node.attrs[key] = "null"
        else:
            node.attrs[key] = value


def read_attrs(node: h5py.HLObject) -> dict[str, Any]:
    """Inverse of :func:`write_attrs` for the JSON-encoded values."""
    out: dict[str, Any] = {}
    for key, value in node.attrs.items():
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, str) and (value.startswith(("[", "{")) or value == "null"):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(value)
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def save_arrays(
    path: str | os.PathLike[str],
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write named arrays (numeric or string) and attributes to an HDF5 file atomically."""
    arrays = {name: np.asarray(array) for name, array in arrays.items()}
    size = sum(array.nbytes for array in arrays.values() if array.dtype.kind not in "UO")
    with atomic_path(path, expected_bytes=size) as tmp, h5py.File(tmp, "w") as f:
        for name, array in arrays.items():
            if array.dtype.kind in "UO":
                f.create_dataset(name, data=array.astype(object), dtype=STRING_DTYPE)
            else:
                f.create_dataset(name, data=array)
        write_attrs(f, {"library_versions": library_versions(), **(attrs or {})})


def load_arrays(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read every top-level dataset and the file attributes of an HDF5 artifact."""
    arrays: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        for name, dataset in f.items():
            if not isinstance(dataset, h5py.Dataset):
                continue
            if h5py.check_string_dtype(dataset.dtype) is not None:
                arrays[name] = dataset.asstr()[()]
            else:
                arrays[name] = dataset[()]
        attrs = read_attrs(f)
    return arrays, attrs


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@dataclass
class FeatureSet:
    features: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    paths: np.ndarray
    attrs: dict[str, Any]


def id_rows(file_ids: Sequence[str], ids: Sequence[str], path: str | Path) -> np.ndarray:
    """The row of each of ``ids`` (in that order) among a feature file's ``file_ids``; unknown ids are a KeyError."""
    position = {image_id: row for row, image_id in enumerate(file_ids)}
    unknown = [i for i in ids if i not in position]
    if unknown:
        raise KeyError(f"{len(unknown)} id(s) not in '{path}', e.g. {unknown[:3]}")
    return np.fromiter((position[i] for i in ids), dtype=np.int64, count=len(ids))


def load_features(path: str | Path, ids: Sequence[str] | None = None) -> FeatureSet:
    """Read a feature file written by the extraction stage, optionally only the rows of ``ids`` (in that order)."""
    with h5py.File(path, "r") as f:
        all_ids = f["ids"].asstr()[()]
        all_paths = f["paths"].asstr()[()]
        labels = f["labels"][()]
        attrs = read_attrs(f)
        if ids is None:
            rows = np.arange(len(all_ids))
            features = f["features"][()]
        else:
            rows = id_rows(all_ids, ids, path)
            order = np.argsort(rows)
            features = np.empty((len(rows), f["features"].shape[1]), dtype=f["features"].dtype)
            features[order] = f["features"][rows[order]]  # h5py needs increasing indices
    return FeatureSet(features.astype(np.float32, copy=False), all_ids[rows], labels[rows], all_paths[rows], attrs)
