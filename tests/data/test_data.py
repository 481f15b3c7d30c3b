import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cbir.data.images import load_rgb_image
from cbir.data.manifest import DatasetError, read_manifest, write_manifest
from cbir.data.scan import count_class_files, scan_image_folder
from cbir.data.sources.digits import write_sklearn_digits
from cbir.data.split import make_split, split_ids, split_table

from helpers import make_image_folder


def test_manifest_lists_every_image_with_label_size_and_checksum(image_folder: Path):
    (image_folder / "red" / "notes.txt").write_text("not an image")
    (image_folder / "green" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (image_folder / "blue" / ".DS_Store").write_bytes(b"\0\0")
    manifest = scan_image_folder(image_folder)

    assert manifest.classes == ["blue", "green", "red"]
    assert len(manifest.images) == 30
    assert manifest.images.groupby("class_name")["label"].first().to_dict() == {"blue": 0, "green": 1, "red": 2}
    first = manifest.images.iloc[0]
    assert first["id"] == "blue/000.png"
    assert (first["width"], first["height"]) == (32, 32)
    assert first["sha256"] == hashlib.sha256(Path(first["path"]).read_bytes()).hexdigest()
    assert first["bytes"] == Path(first["path"]).stat().st_size

    excluded = manifest.excluded.set_index("path")["reason"]
    assert len(excluded) == 1  # the hidden file and the text file are no photos: ignored, not excluded
    assert "cannot decode" in excluded[str(image_folder / "green" / "broken.jpg")]
    ignored = manifest.ignored.set_index(["folder", "kind"])["example"].to_dict()
    assert ignored == {("blue", "os_file"): ".DS_Store", ("red", "other"): "notes.txt"}


def test_manifest_round_trips_through_csv(image_folder: Path, tmp_path: Path):
    manifest = scan_image_folder(image_folder)
    write_manifest(manifest, tmp_path / "m.csv", tmp_path / "x.csv")
    again = read_manifest(tmp_path / "m.csv")
    pd.testing.assert_frame_equal(again, manifest.images, check_dtype=False)


def test_missing_or_empty_folder_is_a_clear_error(tmp_path: Path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_image_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class sub-folders"):
        scan_image_folder(tmp_path / "empty")


def test_images_are_rgb_with_exif_orientation_applied(tmp_path: Path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    image.save(tmp_path / "rotated.jpg", exif=exif)
    Image.new("LA", (5, 5), (0, 0)).save(tmp_path / "transparent.png")
    assert load_rgb_image(tmp_path / "rotated.jpg").size == (20, 40)
    transparent = load_rgb_image(tmp_path / "transparent.png")
    assert transparent.mode == "RGB" and transparent.getpixel((0, 0)) == (255, 255, 255)


def test_split_is_stratified_seeded_and_reproducible():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    first = make_split(labels, 0.8, seed=0)
    assert np.array_equal(first, make_split(labels, 0.8, seed=0))
    assert not np.array_equal(first, make_split(labels, 0.8, seed=1))
    for label, size in zip([0, 1, 2], [50, 30, 20], strict=True):
        assert first[labels == label].sum() == round(0.8 * size)


def test_split_keeps_small_classes_usable():
    labels = np.array([0, 1, 1, 2, 2, 2])
    is_train = make_split(labels, 0.9, seed=0)
    assert is_train[labels == 0].sum() == 1  # a single image trains
    assert is_train[labels == 1].sum() == 1  # two images: one each side
    assert (~is_train[labels == 2]).sum() >= 1


def test_split_file_lists_ids(image_folder: Path, tmp_path: Path):
    manifest = scan_image_folder(image_folder).images
    table = split_table(manifest, 0.7, seed=3)
    table.to_csv(tmp_path / "split.csv", index=False)
    train, test = split_ids(tmp_path / "split.csv", "train"), split_ids(tmp_path / "split.csv", "test")
    assert len(train) == 21 and len(test) == 9
    assert set(train) | set(test) == set(manifest["id"]) and not set(train) & set(test)


def test_sklearn_digits_become_an_image_folder(tmp_path: Path):
    count = write_sklearn_digits(tmp_path / "digits", image_size=16)
    manifest = scan_image_folder(tmp_path / "digits")
    assert count == len(manifest.images) == 1797
    assert manifest.classes == [str(d) for d in range(10)]
    assert (manifest.images["width"] == 16).all()


def test_linked_folders_are_followed_and_hidden_folders_ignored(image_folder: Path, tmp_path: Path):
    elsewhere = make_image_folder(tmp_path / "elsewhere", per_class=2)
    (image_folder / "red" / "more").symlink_to(elsewhere / "red", target_is_directory=True)
    (image_folder / "red" / ".cache").mkdir()
    Image.new("RGB", (4, 4)).save(image_folder / "red" / ".cache" / "thumb.png")
    manifest = scan_image_folder(image_folder)
    red = set(manifest.images.loc[manifest.images["class_name"] == "red", "id"])
    assert {"red/more/000.png", "red/more/001.png"} <= red and len(red) == 12
    assert not any(".cache" in i for i in manifest.images["id"]) and manifest.excluded.empty
    assert count_class_files(image_folder) == [10, 10, 12]  # blue, green, red: what the config check counts
