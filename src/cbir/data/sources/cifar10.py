"""``cifar10``: the official python-pickle batches, read with a restricted unpickler and written out as PNGs.

The workflow exports the batches to ``results/<dataset>/images/<class>/<batch>_<index>.png``
(rule ``cifar10_images``); the manifest is built from that folder, with the official split kept.
"""

from __future__ import annotations

import importlib
import io
import json
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from cbir.data.manifest import EXCLUDED_COLUMNS, DatasetError, Manifest, check_class_counts
from cbir.data.scan import read_exported_folder
from cbir.data.sources.source import FETCH_KEYS, Source, data_dir

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
# images per class: the whole dataset, and the training set of its official split
CIFAR10_CLASS_SIZES = {"all": (6000,) * 10, "official": (5000,) * 10}
CIFAR_EXPORT_REPORT = "export.json"  # in the PNG folder written from the CIFAR-10 batches
SAFE_CLASS_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_ .-]*")


class UnsafePickleError(DatasetError):
    """A pickle asks for something other than plain containers and numpy arrays."""


def _numpy_core(module: str, name: str) -> Callable[..., Any]:
    for prefix in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{prefix}.{module}"), name)
        except ImportError:
            continue
    raise UnsafePickleError(f"numpy has no {module}.{name}")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding.lower().replace("-", "") != "latin1":
        raise UnsafePickleError(f"bytes encoded as '{encoding}' are not allowed in a CIFAR-10 batch")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("builtins", "dict"): lambda: dict,
    ("builtins", "list"): lambda: list,
    ("builtins", "bytes"): lambda: bytes,
    ("builtins", "str"): lambda: str,
    ("builtins", "bytearray"): lambda: bytearray,
    ("__builtin__", "dict"): lambda: dict,
    ("__builtin__", "list"): lambda: list,
    ("_codecs", "encode"): lambda: _latin1_encode,  # bytes in protocol-2 pickles written by Python 3
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_core("multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_core("multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_core("numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_core("numeric", "_frombuffer"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only dicts, lists, bytes, str and numpy arrays; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        resolve = _ALLOWED_GLOBALS.get((module, name))
        if resolve is None:
            raise UnsafePickleError(f"refusing to load '{module}.{name}': a CIFAR-10 batch holds only arrays and lists")
        return resolve()

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("persistent ids are not allowed in a CIFAR-10 batch")


def restricted_load(path: Path) -> Any:
    """Read a pickle file with :class:`RestrictedUnpickler` (Python 2 strings kept as bytes)."""
    data = Path(path).read_bytes()
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


def _get(batch: Mapping[Any, Any], key: str) -> Any:
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise DatasetError(f"no '{key}' entry")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_cifar_batch(path: Path, n_classes: int = 10) -> tuple[np.ndarray, list[int]]:
    """Images (N x 32 x 32 x 3, uint8) and labels of one CIFAR-10 python batch."""
    batch = restricted_load(path)
    if not isinstance(batch, dict):
        raise DatasetError(f"not a CIFAR-10 batch (a {type(batch).__name__}, not a dict)")
    data = _get(batch, "data")
    labels = list(_get(batch, "labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError("'data' is not a uint8 array of N x 3072 pixels")
    if len(labels) != len(data) or not all(isinstance(x, int) and 0 <= x < n_classes for x in labels):
        raise DatasetError(f"'labels' must be {len(data)} integers in 0..{n_classes - 1}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def find_cifar_batches(folder: Path) -> Path | None:
    """The folder holding the batches: ``folder/cifar-10-batches-py`` or ``folder`` itself."""
    for candidate in (Path(folder) / "cifar-10-batches-py", Path(folder)):
        if any((candidate / name).is_file() for name in ("batches.meta", *CIFAR10_BATCHES)):
            return candidate
    return None


def cifar10_class_names(batches: Path) -> list[str]:
    """Class names from ``batches.meta`` (the official order), or the known ones when it is absent."""
    meta_path = batches / "batches.meta"
    if not meta_path.is_file():
        warnings.warn(f"'{meta_path}' is missing; using the standard CIFAR-10 class names", stacklevel=2)
        return list(CIFAR10_CLASSES)
    names = [_text(n) for n in _get(restricted_load(meta_path), "label_names")]
    if len(names) != 10 or not all(SAFE_CLASS_NAME.fullmatch(n) for n in names):
        raise DatasetError(f"'{meta_path}' does not list 10 plain class names: {names!r}")
    return names


def export_cifar10_png(root: Path, out_dir: Path) -> dict[str, Any]:
    """Write the CIFAR-10 batches under ``root`` as ``out_dir/<class>/<batch>_<index>.png``.

    Returns (and writes to ``out_dir/export.json``) what was exported and the batches that could
    not be read, which the manifest lists as excluded. A pickle asking for anything but plain
    containers and numpy arrays stops the export.
    """
    batches = find_cifar_batches(root)
    if batches is None:
        raise DatasetError(f"no CIFAR-10 python batches (cifar-10-batches-py/) under '{root}'")
    names = cifar10_class_names(batches)
    out_dir = Path(out_dir)
    report: dict[str, Any] = {"batches": str(batches), "classes": names, "images": {}, "problems": []}
    for batch in CIFAR10_BATCHES:
        path = batches / batch
        try:
            images, labels = read_cifar_batch(path)
        except UnsafePickleError:
            raise
        except FileNotFoundError:
            report["problems"].append({"path": str(path), "class_name": "", "reason": "batch file is missing"})
            continue
        except (OSError, EOFError, pickle.UnpicklingError, DatasetError, ValueError, TypeError, KeyError) as error:
            reason = f"cannot read CIFAR-10 batch: {type(error).__name__}: {error}"
            report["problems"].append({"path": str(path), "class_name": "", "reason": reason})
            continue
        for name in names:
            (out_dir / name).mkdir(parents=True, exist_ok=True)
        for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
            Image.fromarray(np.ascontiguousarray(pixels)).save(out_dir / names[label] / f"{batch}_{index:05d}.png")
        report["images"][batch] = len(labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CIFAR_EXPORT_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report


def cifar10_manifest(images_dir: Path) -> Manifest:
    """The PNG folder written by :func:`export_cifar10_png`, labelled in the official order."""
    manifest, report = read_exported_folder(images_dir, CIFAR_EXPORT_REPORT, "CIFAR-10")
    names = list(report["classes"])
    is_test = manifest.images["id"].map(lambda i: PurePosixPath(i).name.startswith("test_batch"))
    manifest.images["official_subset"] = np.where(is_test, "test", "train")
    problems = pd.DataFrame(report["problems"], columns=EXCLUDED_COLUMNS)
    excluded = pd.concat([manifest.excluded, problems], ignore_index=True) if len(problems) else manifest.excluded
    manifest = Manifest(images=manifest.images, excluded=excluded, classes=names)
    expected = 6000 if not report["problems"] else None  # 5000 train + 1000 test per class
    check_class_counts(manifest.images, names, expected, len(CIFAR10_CLASSES))
    return manifest


class Cifar10Source(Source):
    name = "cifar10"
    keys = frozenset({"path", "subdir"}) | FETCH_KEYS
    how_to_provide = "unpack cifar-10-python.tar.gz there (it holds cifar-10-batches-py/)"
    official_split = True
    prepared_by = "cifar10_images"  # exports the batches as PNGs into results/<dataset>/images

    def missing_reason(self, entry: Mapping[str, Any], root: Path) -> str | None:
        folder = data_dir(root, entry)
        return None if find_cifar_batches(folder) else f"no CIFAR-10 python batches under '{folder}'"

    def class_sizes(self, entry: Mapping[str, Any], root: Path, official: bool) -> tuple[list[int], str] | None:
        return list(CIFAR10_CLASS_SIZES["official" if official else "all"]), "CIFAR-10"

    def manifest(self, entry: Mapping[str, Any], root: Path, images_dir: Path | None = None) -> Manifest:
        return cifar10_manifest(self.images_folder(entry, root, images_dir))

    def images_folder(self, entry: Mapping[str, Any], root: Path, images_dir: Path | None = None) -> Path:
        """The exported PNG folder, not the folder of the batches."""
        if images_dir is None:
            raise DatasetError("CIFAR-10's manifest is built from its exported PNG folder (images_dir)")
        return Path(images_dir)
