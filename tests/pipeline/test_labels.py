"""``cbir index --labels auto``: sub-folders become classes only where the layout looks like a labelled dataset;
date, camera and library folders, photos at the top, one sub-folder or a nested tree give ``none``, with why."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.pipeline.index_folder import plan_index
from cbir.pipeline.labels import detect_labels, folder_kind

from photo_export import make_photo_export


def photos(root: Path, *relative: str) -> Path:
    """A small PNG at each ``relative`` path below ``root``."""
    for i, path in enumerate(relative):
        pixels = np.random.default_rng(i).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / path)
    return root


def corel_style(root: Path) -> Path:
    return photos(root, *(f"{name}/{i}.jpg" for name in ("africans", "beaches", "buses") for i in range(3)))


def with_system_files(root: Path) -> Path:
    """Class folders, and beside them what an OS and a NAS leave: none of it plays a part."""
    corel_style(root)
    for name in ("africans", "beaches", "buses"):
        (root / name / ".DS_Store").write_bytes(b"\0")
        (root / name / "notes.txt").write_text("to do")
        photos(root, f"{name}/@eaDir/0.jpg/SYNOPHOTO_THUMB_M.jpg")  # nested, but a NAS's thumbnails
    (root / "Thumbs.db").write_bytes(b"\0")
    photos(root, ".thumbnails/0.png")
    (root / "loose.MOV").write_bytes(b"video")  # a video at the top is no photo at the top
    return root


LAYOUTS: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    # name: (how to write it, the decision, a part of its one-line reason)
    "corel-style class folders": (corel_style, "folders", "sorted into 3 sub-folders, each one a class"),
    "class folders with OS and NAS files": (with_system_files, "folders", "sorted into 3 sub-folders"),
    "numbered class folders": (
        lambda root: photos(root, *(f"{digit}/{i}.png" for digit in range(10) for i in range(2))),
        "folders",
        "10 sub-folders",
    ),
    "flat folder": (
        lambda root: photos(root, *(f"IMG_{i}.jpg" for i in range(5))),
        "none",
        "5 photo(s) lie at the top",
    ),
    "months of a year": (
        lambda root: photos(root, *(f"2024/{month:02d}/IMG_{month}.jpg" for month in range(1, 13))),
        "none",
        "'2024' is named by a date",
    ),
    "a year folder's months": (  # the folder indexed is photos/2024
        lambda root: photos(root / "2024", *(f"{month:02d}/IMG_{month}.jpg" for month in range(1, 13))),
        "none",
        "'01' is named by a date",
    ),
    "dated event folders": (
        lambda root: photos(root, "2024-06-01 Paris/a.jpg", "2024_07_14/b.jpg", "2024-08/c.jpg"),
        "none",
        "'2024-06-01 Paris' is named by a date",
    ),
    "phone camera": (
        lambda root: photos(root, "DCIM/100APPLE/IMG_1.jpg", "DCIM/101APPLE/IMG_2.jpg"),
        "none",
        "'DCIM' is named by a camera or an app",
    ),
    "camera card folders": (
        lambda root: photos(root, "100CANON/IMG_1.jpg", "101CANON/IMG_2.jpg"),
        "none",
        "'100CANON' is named by a camera or an app",
    ),
    "apps' folders": (
        lambda root: photos(root, "Camera/a.jpg", "Screenshots/b.png", "WhatsApp Images/c.jpg"),
        "none",
        "'Camera' is named by a camera or an app",
    ),
    "class folders with photos at the top": (
        lambda root: photos(corel_style(root), "IMG_0001.jpg"),
        "none",
        "1 photo(s) lie at the top of the folder beside 3 sub-folder(s)",
    ),
    "one sub-folder": (lambda root: photos(root, "trip/a.jpg", "trip/b.jpg"), "none", "only 'trip' holds photos"),
    "nested tree": (
        lambda root: photos(root, "animals/cats/a.jpg", "animals/dogs/b.jpg", "plants/trees/c.jpg"),
        "none",
        "photos lie in sub-folders of sub-folders ('animals/cats' ...)",
    ),
    "dates and names mixed": (
        lambda root: photos(corel_style(root), "2023/IMG_1.jpg"),
        "none",
        "'2023' is named by a date",
    ),
    "library folders alone": (
        lambda root: photos(root, "Dups/a.jpg", "Edited/b.jpg", "Export/c.jpg"),
        "none",
        "'Dups' is named by what a photo library does with its photos",
    ),
    "the photo export": (make_photo_export, "none", "'2024' is named by a date"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_labels_are_folders_only_for_a_labelled_layout_with_a_one_line_reason(tmp_path: Path, layout: str):
    make, labels, reason = LAYOUTS[layout]
    folder = make(tmp_path / "photos")
    decision = detect_labels(folder)
    assert (decision.labels, "\n" in decision.message) == (labels, False)
    assert reason in decision.reason and decision.message == f"labels: {labels}: {decision.reason}"
    if labels == "none":
        assert "--labels folders" in decision.reason  # how to ask for labels
    plan = plan_index(folder, name="photos", labels="auto", backbone="efficientnet_lite0")
    assert (plan.labels, plan.labels_reason) == (labels, decision.message)
    assert plan.split == ("80-20" if labels == "folders" else "all")


def test_labels_asked_for_are_taken_with_their_reason(tmp_path: Path):
    folder = make_photo_export(tmp_path / "Photos")
    plan = plan_index(folder, name=None, labels="folders", backbone="efficientnet_lite0")
    assert (plan.labels, plan.labels_reason) == ("folders", "labels: folders, as --labels asked")
    assert plan_index(folder, name=None, labels="none", backbone="efficientnet_lite0").labels == "none"


@pytest.mark.parametrize(
    ("name", "parent", "kind"),
    [
        ("2024", "", "a date"),
        ("2024-06", "", "a date"),
        ("2024_06_01", "", "a date"),
        ("20240601", "", "a date"),
        ("June 2024", "", "a date"),
        ("01.06.2024", "", "a date"),
        ("06", "2024", "a date"),
        ("06", "trip", None),  # a number alone is a month only under a year
        ("7", "digits", None),
        ("100APPLE", "", "a camera or an app"),
        ("WhatsApp Images", "", "a camera or an app"),
        ("Photos from 2023", "", "a camera or an app"),
        ("Export", "", "what a photo library does with its photos"),
        ("beaches", "", None),
        ("cats", "2024", None),
    ],
)
def test_folder_names_that_are_never_classes(name: str, parent: str, kind: str | None):
    assert folder_kind(name, parent) == kind
