"""``voc2012``: the official VOCdevkit tree; the label is the class with the largest total bounding-box area."""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cbir.data.manifest import DatasetError, ImageEntry, Manifest, image_records, make_manifest
from cbir.data.sources.source import FETCH_KEYS, Source, data_dir

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def find_voc(folder: Path) -> Path | None:
    """The VOC2012 folder (with Annotations/ and JPEGImages/) at or below ``folder``."""
    folder = Path(folder)
    for candidate in (folder / "VOCdevkit" / "VOC2012", folder / "VOC2012", folder):
        if (candidate / "Annotations").is_dir() and (candidate / "JPEGImages").is_dir():
            return candidate
    return None


def voc_objects(xml_path: Path) -> list[tuple[str, float]]:
    """(class name, bounding-box area in pixels) of each object of a VOC annotation."""
    objects = []
    for obj in ET.parse(xml_path).getroot().findall("object"):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"object '{name}' has no bndbox")
        coords = [box.findtext(k) for k in ("xmin", "ymin", "xmax", "ymax")]
        if any(c is None for c in coords):
            raise ValueError(f"object '{name}' has an incomplete bndbox")
        xmin, ymin, xmax, ymax = (float(c) for c in coords)
        # VOC boxes are 1-based and inclusive: a box from 1 to 10 is 10 pixels wide
        objects.append((name, max(0.0, xmax - xmin + 1) * max(0.0, ymax - ymin + 1)))
    return objects


def voc_labels(objects: Iterable[tuple[str, float]]) -> tuple[str | None, list[str]]:
    """The single label (class with the largest total box area; ties: earlier VOC class) and the label set."""
    area: dict[str, float] = {}
    for name, box_area in objects:
        if name in VOC_CLASSES:
            area[name] = area.get(name, 0.0) + box_area
    if not area:
        return None, []
    present = sorted(area, key=VOC_CLASSES.index)
    primary = max(present, key=lambda name: (area[name], -VOC_CLASSES.index(name)))
    return primary, present


def _read_ids(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class _VocImage:
    """An image its annotation labels: what to inspect, its label set and official subset."""

    entry: ImageEntry
    present: list[str]
    subset: str


def _voc_step(voc: Path, image_id: str, train: set[str], val: set[str]) -> _VocImage | dict[str, Any]:
    """The labelled image of ``image_id``, or the excluded row saying why its annotation gives no label."""
    image = voc / "JPEGImages" / f"{image_id}.jpg"
    xml_path = voc / "Annotations" / f"{image_id}.xml"
    try:
        primary, present = voc_labels(voc_objects(xml_path))
    except FileNotFoundError:
        return {"path": str(image), "class_name": "", "reason": f"no annotation '{xml_path.name}'"}
    except (ET.ParseError, ValueError) as error:
        return {"path": str(image), "class_name": "", "reason": f"cannot read annotation '{xml_path.name}': {error}"}
    if primary is None:
        return {"path": str(image), "class_name": "", "reason": "annotation has no object of the 20 VOC classes"}
    subset = "train" if image_id in train else "test" if image_id in val else ""
    entry = (image, f"JPEGImages/{image_id}.jpg", VOC_CLASSES.index(primary), primary)
    return _VocImage(entry, present, subset)


def voc_manifest(root: Path) -> Manifest:
    """The images of ``ImageSets/Main/trainval.txt``, each labelled from its annotation.

    ``label``/``class_name``: the class with the largest total bounding-box area; ``labels``:
    every class present, '|'-joined in VOC order; ``official_subset``: ``train`` for
    ``train.txt``, ``test`` for ``val.txt`` (VOC's test annotations are not public).
    """
    voc = find_voc(root)
    if voc is None:
        raise DatasetError(f"no VOC2012 tree (VOCdevkit/VOC2012/Annotations, JPEGImages) under '{root}'")
    main = voc / "ImageSets" / "Main"
    if (main / "trainval.txt").is_file():
        ids = _read_ids(main / "trainval.txt")
    else:
        warnings.warn(f"'{main / 'trainval.txt'}' is missing; using every annotation in Annotations/", stacklevel=2)
        ids = sorted(p.stem for p in (voc / "Annotations").glob("*.xml"))
    train = set(_read_ids(main / "train.txt")) if (main / "train.txt").is_file() else set()
    val = set(_read_ids(main / "val.txt")) if (main / "val.txt").is_file() else set()
    # the annotations are read first, then the images they label are inspected together
    steps = [_voc_step(voc, image_id, train, val) for image_id in ids]
    labelled = [step for step in steps if isinstance(step, _VocImage)]
    records = iter(image_records([step.entry for step in labelled]))
    rows: list[dict[str, Any]] = []
    excluded: list[dict[str, Any]] = []
    for step in steps:
        if not isinstance(step, _VocImage):
            excluded.append(step)
            continue
        record = next(records)
        if isinstance(record, str):
            excluded.append({"path": str(step.entry[0]), "class_name": step.entry[3], "reason": record})
        else:
            rows.append({**record, "labels": "|".join(step.present), "official_subset": step.subset})
    return make_manifest(rows, excluded, VOC_CLASSES, extra=("labels", "official_subset"))


class Voc2012Source(Source):
    """Class sizes are unknown before the manifest (one label per image from its annotation)."""

    name = "voc2012"
    keys = frozenset({"path", "subdir"}) | FETCH_KEYS
    how_to_provide = "unpack VOCtrainval_11-May-2012.tar there (it holds VOCdevkit/VOC2012/)"
    official_split = True

    def missing_reason(self, entry: Mapping[str, Any], root: Path) -> str | None:
        folder = data_dir(root, entry)
        return None if find_voc(folder) else f"no VOC2012 tree (Annotations/, JPEGImages/) under '{folder}'"

    def manifest(self, entry: Mapping[str, Any], root: Path, images_dir: Path | None = None) -> Manifest:
        return voc_manifest(data_dir(root, entry))
