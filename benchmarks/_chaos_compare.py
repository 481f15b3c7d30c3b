"""The chaos harness's judge: a killed-and-resumed run's outputs against an uninterrupted run's, and torn files.

Compared bit for bit, after replacing each run's own folder by ``<root>`` in every string: every HDF5 file's
datasets and attributes, every CSV and JSON file, the index configs, and the feature cache by content (each
image's features, whatever pack holds them). Left out: what a clock decides (timings, the job logs and
benchmarks, the plots and pages that show timings). A torn file is one under its final name that cannot be read
whole: an HDF5 file that does not open or is marked incomplete, a CSV or JSON file that does not parse; a
temporary file (``.<name>.partial-<pid>``) left after the final resume is counted as left behind.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from cbir.io import PARTIAL_MARK, read_attrs

# names of values a clock decides: time_* metrics, fit_seconds, time_fit_space_s, ...
TIMING_NAME = re.compile(r"(^|_)(time|seconds|latency|elapsed|duration)(_|$)|_(us|ms|s)$")
SKIPPED_FOLDERS = {"logs", "benchmarks"}  # the jobs' own logs and resource use
SKIPPED_SUFFIXES = {".png", ".html", ".md", ".log", ".tsv", ".lock"}  # plots and pages, logs, the run's lock
CACHE = Path("results/cache/features")


def is_timing(name: str) -> bool:
    return bool(TIMING_NAME.search(name.lower()))


def compared_files(root: Path) -> list[Path]:
    """The outputs of a run that must not depend on kills: relative paths under ``root``."""
    files = []
    for path in sorted((root / "results").rglob("*")):
        relative = path.relative_to(root)
        if not path.is_file() or PARTIAL_MARK in path.name or path.suffix in SKIPPED_SUFFIXES:
            continue
        if SKIPPED_FOLDERS & set(relative.parts) or relative.is_relative_to(CACHE):
            continue
        if path.suffix == ".csv" and "time" in path.name:  # the summary's tables of timings
            continue
        files.append(relative)
    return files


def normalised(value: Any, roots: tuple[str, ...]) -> Any:
    """A value with each run's folder written ``<root>``, recursively, and timing entries of mappings dropped."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str):
        for root in roots:
            value = value.replace(root, "<root>")
        return value
    if isinstance(value, dict):
        return {k: normalised(v, roots) for k, v in value.items() if not is_timing(str(k))}
    if isinstance(value, (list, tuple)):
        return [normalised(v, roots) for v in value]
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return np.array([normalised(v, roots) for v in value.ravel().tolist()], dtype=object).reshape(value.shape)
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind == "O" or b.dtype.kind == "O":
            return a.shape == b.shape and a.tolist() == b.tolist()
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()  # bit for bit
    return _canonical(a) == _canonical(b)  # floats by their repr: exact, and NaN equal to NaN


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


def _h5_contents(path: Path, roots: tuple[str, ...]) -> dict[str, Any]:
    contents: dict[str, Any] = {}
    with h5py.File(path, "r") as f:

        def visit(name: str, node: Any) -> None:
            attrs = normalised(read_attrs(node), roots)
            contents.update({f"{name}@{key}": value for key, value in attrs.items()})
            if isinstance(node, h5py.Dataset):
                data = node.asstr()[()] if h5py.check_string_dtype(node.dtype) else node[()]
                contents[name] = normalised(data, roots) if isinstance(data, (np.ndarray, str)) else data

        visit("/", f)
        f.visititems(visit)
    return contents


def _csv_contents(path: Path, roots: tuple[str, ...]) -> Any:
    text = normalised(path.read_text(), roots)
    head = text.splitlines()[:2]
    if not any(is_timing(column) for line in head for column in line.split(",")):
        return text  # bit for bit
    frame = pd.read_csv(path, comment=None)
    frame = frame.drop(columns=[c for c in frame.columns if is_timing(str(c))])
    return normalised(frame.to_csv(index=False), roots)


def contents(path: Path, roots: tuple[str, ...]) -> Any:
    """What of a file is compared (see the module's docstring)."""
    if path.suffix == ".h5":
        return _h5_contents(path, roots)
    if path.suffix == ".csv":
        return _csv_contents(path, roots)
    if path.suffix == ".json":
        return normalised(json.loads(path.read_text()), roots)
    return normalised(path.read_bytes(), roots)


def differences(reference: Path, chaos: Path) -> list[str]:
    """Every way in which the chaos run's outputs differ from the reference's, one line each."""
    roots = (str(reference.resolve()), str(chaos.resolve()))
    found = []
    ours, theirs = set(compared_files(chaos)), set(compared_files(reference))
    found += [f"{p}: missing after the chaos run" for p in sorted(theirs - ours)]
    found += [f"{p}: only in the chaos run" for p in sorted(ours - theirs)]
    for relative in sorted(ours & theirs):
        try:
            a, b = contents(reference / relative, roots), contents(chaos / relative, roots)
        except (OSError, ValueError) as error:
            found.append(f"{relative}: unreadable ({error})")
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            keys = sorted(set(a) | set(b))
            bad = [k for k in keys if k not in a or k not in b or not _same(a[k], b[k])]
            found += [f"{relative}: {k} differs" for k in bad[:5]]
        elif not _same(a, b):
            found.append(f"{relative}: differs")
    found += cache_differences(reference, chaos)
    return found


def cached_features(root: Path) -> dict[tuple[str, str], bytes]:
    """(fingerprint folder, image SHA-256) -> the image's features, as bytes, over every pack of the cache."""
    rows: dict[tuple[str, str], bytes] = {}
    for pack in sorted((root / CACHE).glob("*/*.h5")):
        if pack.name.startswith("."):
            continue
        with h5py.File(pack, "r") as f:
            features = f["features"][()]
            for digest, row in zip(f["sha256"][()], features, strict=True):
                rows.setdefault((pack.parent.name, digest.decode()), row.tobytes())
    return rows


def cache_differences(reference: Path, chaos: Path) -> list[str]:
    a, b = cached_features(reference), cached_features(chaos)
    found = [f"feature cache: {len(set(a) - set(b))} image(s) missing"] if set(a) - set(b) else []
    found += [f"feature cache: {len(set(b) - set(a))} image(s) more"] if set(b) - set(a) else []
    changed = [key for key in set(a) & set(b) if a[key] != b[key]]
    found += [f"feature cache: the features of {len(changed)} image(s) differ"] if changed else []
    for record in sorted((reference / CACHE).glob("*/fingerprint.json")):
        other = chaos / record.relative_to(reference)
        if not other.is_file() or json.loads(other.read_text()) != json.loads(record.read_text()):
            found.append(f"feature cache: {record.relative_to(reference)} missing or different")
    return found


def torn_files(root: Path) -> list[str]:
    """Files under their final name that cannot be read whole (see the module's docstring)."""
    torn = []
    for path in sorted((root / "results").rglob("*")):
        if not path.is_file() or PARTIAL_MARK in path.name:
            continue
        try:
            if path.suffix == ".h5":
                with h5py.File(path, "r") as f:
                    if "complete" in f.attrs and not f.attrs["complete"]:
                        torn.append(f"{path.relative_to(root)}: marked incomplete")
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".csv" and path.stat().st_size:
                pd.read_csv(path, comment="#")
        except (OSError, ValueError, UnicodeDecodeError) as error:
            torn.append(f"{path.relative_to(root)}: {type(error).__name__}: {str(error)[:120]}")
    return torn


def left_behind(root: Path) -> list[str]:
    """Temporary files of interrupted writes still there."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(f"*{PARTIAL_MARK}*") if ".snakemake" not in p.parts)
