"""``fashion_mnist``: Zalando's Fashion-MNIST, read from its four gzipped IDX files and written out as PNGs.

The files (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``) are read by a strict IDX reader:
the magic number, the big-endian dimensions and the exact length are checked, and anything else
stops with a :class:`DatasetError` naming the file and what is wrong. The workflow exports them to
``results/<dataset>/images/<class>/<subset>_<index>.png`` (rule ``fashion_mnist_images``;
``<index>`` is the image's position in the official file), optionally a seeded, class-balanced
subset (``max_per_class``); the manifest is built from that folder, with the official split kept.

Debian's package ``dataset-fashion-mnist`` installs the four files in
``/usr/share/datasets/fashion-mnist``. It recompresses them, so their ``.gz`` MD5s are not the
ones of the Fashion-MNIST README; the unpacked content is the same, and that is what is compared.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from cbir.data.manifest import DatasetError, Manifest
from cbir.data.scan import read_exported_folder
from cbir.data.sources.source import Source, data_dir

# Labels 0..9 in the official order (T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt,
# Sneaker, Bag, Ankle boot), as folder names.
FASHION_MNIST_CLASSES = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
# the official split: subset -> (images file, labels file)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_SIZES = {"train": 60000, "test": 10000}  # 6,000 and 1,000 per class
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"  # + file name
# MD5 of each official .gz file (the Fashion-MNIST README) and of its unpacked content (the
# same in Debian's recompressed copies, whose .gz MD5s differ)
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
    "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
    "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
    "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
}
DEBIAN_FOLDER = "/usr/share/datasets/fashion-mnist"  # apt install dataset-fashion-mnist
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (count, rows, columns)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (count)
IDX_MAX_BYTES = 1 << 31  # a header declaring more is refused before anything is read
FASHION_EXPORT_REPORT = "export.json"  # in the PNG folder written from the IDX files
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


def _describe_magic(magic: int) -> str:
    known = {IDX_IMAGES_MAGIC: "IDX images", IDX_LABELS_MAGIC: "IDX labels"}
    return f"0x{magic:08X}" + (f" ({known[magic]})" if magic in known else "")


def _read_exact(stream: Any, size: int) -> bytes:
    """Up to ``size`` bytes of ``stream`` (fewer only at its end), read in chunks."""
    parts, got = [], 0
    while got < size:
        chunk = stream.read(min(_CHUNK, size - got))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def fashion_mnist_paths(folder: str | Path) -> list[Path]:
    """The four files in ``folder``: train images and labels, then test images and labels."""
    return [Path(folder) / name for pair in FASHION_MNIST_FILES.values() for name in pair]


def read_idx_gz(path: str | Path, magic: int) -> tuple[np.ndarray, str]:
    """The uint8 array of a gzipped IDX file, and the MD5 of its unpacked bytes.

    Strict: the file must be gzip-compressed, start with ``magic`` (0x00000803 for images,
    0x00000801 for labels), and hold exactly the bytes its big-endian dimensions declare. Anything
    else is a :class:`DatasetError` naming the file and what is wrong.
    """
    path = Path(path)
    ndim = magic & 0xFF
    try:
        with open(path, "rb") as raw:
            if raw.read(2) != _GZIP_MAGIC:
                raise DatasetError(
                    f"'{path}' is not gzip-compressed (no gzip signature 1f 8b): cbir reads the .gz files as "
                    "published; compress an unpacked IDX file with `gzip -k`"
                )
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw) as stream:
                header = _read_exact(stream, 4 + 4 * ndim)
                if len(header) < 4:
                    raise DatasetError(f"'{path}' is truncated: {len(header)} byte(s), not even an IDX magic number")
                found = int.from_bytes(header[:4], "big")
                if found != magic:
                    raise DatasetError(
                        f"'{path}' has the wrong magic number {_describe_magic(found)}, "
                        f"expected {_describe_magic(magic)}"
                    )
                if len(header) < 4 + 4 * ndim:
                    raise DatasetError(f"'{path}' is truncated inside its header ({len(header)} bytes)")
                dims = [int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
                size = math.prod(dims)
                shape = " x ".join(map(str, dims))
                if size > IDX_MAX_BYTES:
                    raise DatasetError(f"'{path}' declares {shape} = {size} bytes, more than an IDX file cbir reads")
                if ndim > 1 and 0 in dims[1:]:
                    raise DatasetError(f"'{path}' declares images of {shape}: an image dimension is 0")
                data = _read_exact(stream, size)
                if len(data) < size:
                    raise DatasetError(
                        f"'{path}' is truncated: its header declares {shape} = {size} bytes of data, "
                        f"the file holds {len(data)}"
                    )
                extra = len(_read_exact(stream, _CHUNK))
                if extra:
                    more = "" if extra < _CHUNK else " or more"
                    raise DatasetError(
                        f"'{path}' is longer than its header declares ({shape} = {size} bytes of data, then "
                        f"{extra}{more} byte(s) more)"
                    )
    except FileNotFoundError:
        raise DatasetError(f"'{path}' is missing") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DatasetError(f"'{path}' is truncated or corrupt: gzip says {error}") from error
    except OSError as error:
        raise DatasetError(f"cannot read '{path}': {error}") from error
    digest = hashlib.md5(header + data, usedforsecurity=False).hexdigest()
    return np.frombuffer(data, dtype=np.uint8).reshape(dims), digest


def read_labels(path: str | Path) -> tuple[np.ndarray, str]:
    """The labels of an IDX label file (each a class of :data:`FASHION_MNIST_CLASSES`) and its content MD5."""
    labels, digest = read_idx_gz(path, IDX_LABELS_MAGIC)
    bad = np.flatnonzero(labels >= len(FASHION_MNIST_CLASSES))
    if len(bad):
        raise DatasetError(
            f"'{path}': label {int(labels[bad[0]])} at position {int(bad[0])} is not a Fashion-MNIST class "
            f"(0..{len(FASHION_MNIST_CLASSES) - 1}); {len(bad)} such label(s)"
        )
    return labels, digest


def read_subset(folder: str | Path, subset: str) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Images (N x rows x columns, uint8), labels and content MD5s (by file name) of ``train`` or ``test``."""
    images_name, labels_name = FASHION_MNIST_FILES[subset]
    images_path, labels_path = Path(folder) / images_name, Path(folder) / labels_name
    images, images_md5 = read_idx_gz(images_path, IDX_IMAGES_MAGIC)
    labels, labels_md5 = read_labels(labels_path)
    if len(images) != len(labels):
        raise DatasetError(
            f"'{images_path}' holds {len(images)} images but '{labels_path}' holds {len(labels)} labels: "
            "the two files do not belong together"
        )
    return images, labels, {images_name: images_md5, labels_name: labels_md5}


def class_quotas(counts: list[int], cap: int | None) -> list[int]:
    """How many of a class's images each subset keeps under a cap of ``cap`` per class.

    The cap is shared in proportion to the subsets' sizes (largest remainders), and a subset that
    has images of the class keeps at least one where the cap allows: the official test set then
    still holds every class. No cap, or a cap above the class's size, keeps everything.
    """
    total = sum(counts)
    if cap is None or cap >= total:
        return list(counts)
    exact = [cap * n / total for n in counts]
    quotas = [int(e) for e in exact]
    by_remainder = sorted(range(len(counts)), key=lambda i: (quotas[i] - exact[i], i))
    for i in by_remainder[: cap - sum(quotas)]:
        quotas[i] += 1
    if cap >= sum(1 for n in counts if n):
        for i, n in enumerate(counts):
            if n and not quotas[i]:
                donor = max(range(len(counts)), key=lambda j: (quotas[j], -j))
                quotas[donor] -= 1
                quotas[i] += 1
    return quotas


def _class_counts(labels: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = len(FASHION_MNIST_CLASSES)
    return {subset: np.bincount(labels[subset], minlength=n) for subset in labels}


def select_per_class(
    labels: Mapping[str, np.ndarray], max_per_class: int | None, seed: int = 0
) -> dict[str, np.ndarray]:
    """The positions kept in each subset's files: all, or at most ``max_per_class`` images of each class.

    A seeded sample, drawn per class and subset (:func:`class_quotas` shares the cap out), so
    the same files, cap and seed always give the same images, in file order.
    """
    if max_per_class is None:
        return {subset: np.arange(len(labels[subset])) for subset in labels}
    subsets = list(labels)
    counts = _class_counts(labels)
    kept: dict[str, list[np.ndarray]] = {subset: [] for subset in subsets}
    for label in range(len(FASHION_MNIST_CLASSES)):
        quotas = class_quotas([int(counts[s][label]) for s in subsets], max_per_class)
        for number, (subset, quota) in enumerate(zip(subsets, quotas, strict=True)):
            positions = np.flatnonzero(labels[subset] == label)
            rng = np.random.default_rng([seed, label, number])
            kept[subset].append(rng.choice(positions, size=quota, replace=False))
    return {subset: np.sort(np.concatenate(kept[subset])).astype(np.int64) for subset in subsets}


def export_fashion_mnist_png(
    folder: str | Path,
    out_dir: str | Path,
    *,
    max_per_class: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Write Fashion-MNIST's IDX files in ``folder`` as ``out_dir/<class>/<subset>_<index>.png``.

    ``<subset>`` is ``train`` or ``test`` (the official split), ``<index>`` the image's position in
    its file. ``max_per_class``: a seeded, class-balanced subset (:func:`select_per_class`);
    ``image_size``: the side the 28 x 28 images are resized to (bicubic; None keeps them).
    Returns (and writes to ``out_dir/export.json``) what was exported, and whether each file's
    content is the official one. Any unreadable file stops the export (:class:`DatasetError`).
    """
    folder, out_dir = Path(folder), Path(out_dir)
    data = {subset: read_subset(folder, subset) for subset in FASHION_MNIST_FILES}
    chosen = select_per_class({subset: labels for subset, (_, labels, _) in data.items()}, max_per_class, seed)
    per_class = dict.fromkeys(FASHION_MNIST_CLASSES, 0)
    for subset, (images, labels, _) in data.items():
        for label in np.unique(labels[chosen[subset]]):
            (out_dir / FASHION_MNIST_CLASSES[label]).mkdir(parents=True, exist_ok=True)
        for index in chosen[subset]:
            name = FASHION_MNIST_CLASSES[labels[index]]
            image = Image.fromarray(np.ascontiguousarray(images[index]))
            if image_size and image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
            image.save(out_dir / name / f"{subset}_{index:05d}.png")
            per_class[name] += 1
    digests = {name: md5 for _, _, md5s in data.values() for name, md5 in md5s.items()}
    report: dict[str, Any] = {
        "folder": str(folder),
        "classes": list(FASHION_MNIST_CLASSES),
        "in_files": {subset: len(labels) for subset, (_, labels, _) in data.items()},
        "images": {subset: len(chosen[subset]) for subset in data},
        "per_class": {name: n for name, n in per_class.items() if n},
        "max_per_class": max_per_class,
        "image_size": image_size,
        "seed": seed,
        "content_md5": digests,
        "official_content": all(FASHION_MNIST_MD5[name][1] == md5 for name, md5 in digests.items()),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / FASHION_EXPORT_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report


def fashion_mnist_manifest(images_dir: str | Path) -> Manifest:
    """The PNG folder written by :func:`export_fashion_mnist_png`, labelled in the official order.

    ``official_subset`` comes from the file names (``train_…``, ``test_…``). A class whose image
    count differs from what was exported is a warning naming it.
    """
    images_dir = Path(images_dir)
    manifest, report = read_exported_folder(images_dir, FASHION_EXPORT_REPORT, "Fashion-MNIST")
    subset = manifest.images["id"].map(lambda i: PurePosixPath(i).name.split("_", 1)[0])
    if not subset.isin(list(FASHION_MNIST_FILES)).all():
        odd = manifest.images.loc[~subset.isin(list(FASHION_MNIST_FILES)), "id"].iloc[0]
        raise DatasetError(f"'{images_dir}' holds '{odd}', which is not named <train|test>_<index>.png")
    manifest.images["official_subset"] = subset.to_numpy()
    counts = manifest.images["class_name"].value_counts()
    for name, exported in report["per_class"].items():
        have = int(counts.get(name, 0))
        if have != exported:
            warnings.warn(f"class '{name}' has {have} images, {exported} were exported", stacklevel=2)
    return manifest


def _missing_files(folder: Path) -> list[str]:
    return [path.name for path in fashion_mnist_paths(folder) if not path.is_file()]


class FashionMnistSource(Source):
    name = "fashion_mnist"
    keys = frozenset({"path", "subdir", "max_per_class", "image_size"})
    how_to_provide = (
        f"put the four .gz files there, or set its path to {DEBIAN_FOLDER} after `apt install dataset-fashion-mnist`"
    )
    official_split = True
    prepared_by = "fashion_mnist_images"  # exports the IDX files as PNGs into results/<dataset>/images

    def missing_reason(self, entry: Mapping[str, Any], root: Path) -> str | None:
        folder = data_dir(root, entry)
        missing = _missing_files(folder)
        if not missing:
            return None
        unpacked = [name for name in missing if (folder / name.removesuffix(".gz")).is_file()]
        hint = (
            f"; {', '.join(n.removesuffix('.gz') for n in unpacked)} is there unpacked: cbir reads the .gz files "
            "(`gzip -k` them)"
            if unpacked
            else ""
        )
        which = "none of the four files" if len(missing) == 4 else f"{len(missing)} of the four files are missing"
        return (
            f"{which} in '{folder}': {', '.join(missing)}{hint}. Debian and Ubuntu: "
            f"`apt install dataset-fashion-mnist` installs them in {DEBIAN_FOLDER}; or download each from "
            f"{FASHION_MNIST_URL}<file> (MD5s in the Fashion-MNIST README)"
        )

    def instructions(self, dataset: str) -> str:
        """No ``url``: the four separate files are no archive the download rule could unpack."""
        return (
            f"set datasets.{dataset}.path to the folder holding the four .gz files (e.g. {DEBIAN_FOLDER}), "
            f"or put them in data_root/{dataset}"
        )

    def class_sizes(self, entry: Mapping[str, Any], root: Path, official: bool) -> tuple[list[int], str] | None:
        """Counted from the label files, with ``max_per_class`` applied (None where they cannot be read)."""
        folder = data_dir(root, entry)
        try:
            labels = {subset: read_labels(folder / files[1])[0] for subset, files in FASHION_MNIST_FILES.items()}
        except DatasetError:
            return None
        cap = entry.get("max_per_class")
        counts = _class_counts(labels)
        train = list(labels).index("train")
        sizes = []
        for label in range(len(FASHION_MNIST_CLASSES)):
            quotas = class_quotas([int(counts[subset][label]) for subset in labels], cap)
            sizes.append(quotas[train] if official else sum(quotas))
        where = f"Fashion-MNIST's label files in '{folder}'" + (f", at most {cap} per class" if cap else "")
        return [n for n in sizes if n], where

    def manifest(self, entry: Mapping[str, Any], root: Path, images_dir: Path | None = None) -> Manifest:
        return fashion_mnist_manifest(self.images_folder(entry, root, images_dir))

    def images_folder(self, entry: Mapping[str, Any], root: Path, images_dir: Path | None = None) -> Path:
        """The exported PNG folder, not the folder of the IDX files."""
        if images_dir is None:
            raise DatasetError("Fashion-MNIST's manifest is built from its exported PNG folder (images_dir)")
        return Path(images_dir)
