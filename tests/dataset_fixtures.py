"""Tiny stand-ins for the paper's five datasets, in their real layouts, and archives of them."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from cbir.data.sources import CIFAR10_BATCHES, CIFAR10_CLASSES, COREL1K_CLASSES

from helpers import REPO


def tiny_jpeg(path: Path, seed: int, size: int = 12) -> Path:
    """A small noisy JPEG whose colour depends on ``seed``."""
    rng = np.random.default_rng(seed)
    colour = rng.integers(0, 256, size=3)
    pixels = np.clip(colour[None, None, :] + rng.normal(0, 20, size=(size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG")
    return path


def numbered_flat(folder: Path, n_classes: int, per_class: int, images_per_class: int, first_index: int = 0) -> Path:
    """``folder/<index>.jpg``: the first ``per_class`` indices of each class block."""
    for label in range(n_classes):
        for j in range(per_class):
            index = first_index + label * images_per_class + j
            tiny_jpeg(folder / f"{index}.jpg", seed=index)
    return folder


def corel1k_flat(folder: Path, per_class: int = 3) -> Path:
    """Wang's layout: 0.jpg … 999.jpg in one folder (here the first few of each class)."""
    return numbered_flat(folder, 10, per_class, 100)


def class_folders(folder: Path, names: list[str] | tuple[str, ...], per_class: int = 3, start: int = 0) -> Path:
    """One sub-folder per class, files named by their index in a class-major numbering."""
    for label, name in enumerate(names):
        for j in range(per_class):
            index = start + label * 100 + j
            tiny_jpeg(folder / name / f"{index}.jpg", seed=index)
    return folder


def corel1k_folders(folder: Path, per_class: int = 3) -> Path:
    """The re-packaging with one folder per class: <class>/<Wang index>.jpg."""
    return class_folders(folder, COREL1K_CLASSES, per_class)


def cifar_batch(labels: list[int], seed: int, name: str) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": name.encode(),
        b"labels": labels,
        b"data": rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8),
        b"filenames": [f"{CIFAR10_CLASSES[label]}_s_{seed:03d}{i:03d}.png".encode() for i, label in enumerate(labels)],
    }


def cifar_tree(root: Path, protocol: int = 2) -> dict[str, dict]:
    """``root/cifar-10-batches-py`` as in cifar-10-python.tar.gz: one image per class in each batch.

    That makes 5 x 10 training and 10 test images. Returns the batches written, by name.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for seed, name in enumerate(CIFAR10_BATCHES):
        batches[name] = cifar_batch(list(range(10))[::-1] if seed % 2 else list(range(10)), seed, name)
        with open(folder / name, "wb") as f:
            pickle.dump(batches[name], f, protocol=protocol)
    meta = {b"num_cases_per_batch": 10, b"label_names": [n.encode() for n in CIFAR10_CLASSES], b"num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=protocol)
    (folder / "readme.html").write_text("<html>CIFAR-10</html>")
    return batches


# VOC images: id -> objects (class, (xmin, ymin, xmax, ymax)), 1-based inclusive boxes
VOC_SAMPLE: dict[str, list[tuple[str, tuple[int, int, int, int]]]] = {
    "2008_000001": [("dog", (1, 1, 40, 40))],
    # the horse has the largest single box (1600 px), but the two persons cover 1800 px in total
    "2008_000002": [("person", (1, 1, 30, 30)), ("horse", (1, 1, 40, 40)), ("person", (31, 1, 60, 30))],
    "2008_000003": [("cat", (1, 1, 10, 10)), ("sofa", (1, 1, 60, 40))],
    # a tie: the class listed first in VOC's order (bus before car) wins
    "2008_000004": [("car", (1, 1, 20, 20)), ("bus", (1, 1, 20, 20))],
    "2008_000005": [("aeroplane", (5, 5, 50, 30)), ("person", (10, 10, 12, 20)), ("person", (20, 10, 22, 20))],
    "2008_000006": [("tvmonitor", (2, 2, 30, 30)), ("chair", (1, 1, 10, 50)), ("pottedplant", (40, 1, 60, 10))],
}


def voc_xml(image_id: str, objects: list[tuple[str, tuple[int, int, int, int]]], width: int = 64) -> str:
    parts = [
        f"<annotation><folder>VOC2012</folder><filename>{image_id}.jpg</filename>",
        f"<size><width>{width}</width><height>48</height><depth>3</depth></size><segmented>0</segmented>",
    ]
    for name, (xmin, ymin, xmax, ymax) in objects:
        parts.append(
            f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
            f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>"
            "<part><name>head</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></part>"
            "</object>"
        )
    return "".join(parts) + "</annotation>\n"


def voc_tree(root: Path, sample: dict | None = None, train: int = 3) -> Path:
    """``root/VOCdevkit/VOC2012`` as in VOCtrainval_11-May-2012.tar; the first ``train`` ids are train, the rest val."""
    sample = VOC_SAMPLE if sample is None else sample
    voc = root / "VOCdevkit" / "VOC2012"
    main = voc / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    (voc / "Annotations").mkdir(parents=True, exist_ok=True)
    for i, (image_id, objects) in enumerate(sample.items()):
        tiny_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", seed=100 + i, size=16)
        (voc / "Annotations" / f"{image_id}.xml").write_text(voc_xml(image_id, objects))
    ids = list(sample)
    (main / "trainval.txt").write_text("".join(f"{i}\n" for i in ids))
    (main / "train.txt").write_text("".join(f"{i}\n" for i in ids[:train]))
    (main / "val.txt").write_text("".join(f"{i}\n" for i in ids[train:]))
    # a class-specific list, as in the real ImageSets/Main, must not be mistaken for an image list
    (main / "dog_trainval.txt").write_text("".join(f"{i} {1 if i == ids[0] else -1}\n" for i in ids))
    return root


def tar_folder(source: Path, archive: Path, mode: str = "w:gz") -> Path:
    """Archive the contents of ``source`` (its entries at the archive's top level)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, mode) as tar:
        for entry in sorted(source.iterdir()):
            tar.add(entry, arcname=entry.name)
    return archive


def zip_folder(source: Path, archive: Path) -> Path:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(source.rglob("*")):
            zf.write(path, path.relative_to(source).as_posix())
    return archive


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def archive_entry(archive: Path) -> dict:
    """The url, sha256 and size keys of a config entry serving ``archive`` through file://."""
    return {"url": archive.resolve().as_uri(), "sha256": sha256_of(archive), "size": archive.stat().st_size}


def paper_datasets(data_root: Path) -> Path:
    """The five datasets where config/paper.yaml expects them, in their real layouts."""
    corel1k_flat(data_root / "corel1k", per_class=2)
    class_folders(data_root / "corel10k", [str(i) for i in range(1, 4)], per_class=2)
    class_folders(data_root / "ghim10k", ["buildings", "flowers"], per_class=2)
    cifar_tree(data_root / "cifar10")
    voc_tree(data_root / "voc2012")
    return data_root


# --- Fashion-MNIST's four IDX files, fake, in the real layout --------------------------------

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def idx_payload(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file's bytes: magic number, big-endian dimensions, then the uint8 values."""
    magic = (0x0800 | array.ndim) if magic is None else magic
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return magic.to_bytes(4, "big") + dims + np.asarray(array, dtype=np.uint8).tobytes()


def write_gz(path: Path, payload: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload, mtime=0))
    return path


def fake_fashion(folder: Path, per_class: dict[str, int] | None = None, classes=(0, 1, 2), seed: int = 0) -> dict:
    """The four .gz files with ``per_class`` images of each of ``classes`` per subset, in shuffled order.

    Returns, per subset, the images and labels written.
    """
    per_class = per_class or {"train": 4, "test": 2}
    rng = np.random.default_rng(seed)
    written = {}
    for subset, (images_name, labels_name) in FILES.items():
        labels = rng.permutation(np.repeat(np.asarray(classes, dtype=np.uint8), per_class[subset]))
        images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
        write_gz(folder / images_name, idx_payload(images))
        write_gz(folder / labels_name, idx_payload(labels))
        written[subset] = (images, labels)
    return written


def default_config_with(tmp_path: Path, datasets: dict, splits: list[str] | None = None) -> dict:
    """The default config with these datasets in the grid, at PCA 4 and original."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["data_root"] = str(tmp_path)
    config["datasets"] = datasets
    config["grid"]["datasets"] = list(datasets)
    config["grid"]["splits"] = splits or ["80-20"]
    config["grid"]["pca"] = [4, "original"]
    return config
