"""Fine-tuning a backbone on a training split's labels: the weights it writes, the images it reads, its resume,
its record, and the input it refuses before any training."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cbir.extraction import finetune as finetune_module
from cbir.extraction import finetune_data
from cbir.extraction.build import build_backbone
from cbir.extraction.finetune import FinetuneError, FinetuneSettings, check_finetune_input, finetune
from cbir.extraction.finetune_checkpoint import CHECKPOINT_FILE
from cbir.extraction.finetune_data import retrieval_map
from cbir.extraction.registry import BackboneSpec, get_backbone

SPEC = BackboneSpec("efficientnet_lite0", weights="random", pooling="avg", image_size=32)
SETTINGS = FinetuneSettings(epochs=2, batch_size=8)
COLOURS = [(200, 40, 40), (40, 180, 60), (40, 60, 200)]
PER_CLASS = 8
RECORD_FIELDS = {
    "base", "settings", "seed", "device", "precision", "epochs", "best_epoch", "stopped_early", "n_train",
    "n_validation", "n_classes", "library_versions",
}  # fmt: skip
EPOCH_FIELDS = {"epoch", "train_loss", "validation_map", "validation_accuracy", "seconds", "images_per_second"}


class Interrupted(Exception):
    """Stands for a job killed after a checkpoint was written."""


def _write_image(path: Path, colour: tuple[int, int, int], stripes: int, rng: np.random.Generator) -> Path:
    pixels = np.asarray(colour, dtype=float)[None, None, :] + rng.normal(0, 30, size=(32, 32, 3))
    pixels[:, :: stripes + 2] *= 0.4  # a pattern of the class besides its colour
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> tuple[list[Path], np.ndarray, np.ndarray, list[Path]]:
    """3 classes x 8 training images (2 of each held out for validation), and test images never to be read."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths, labels, test_paths = [], [], []
    for label, colour in enumerate(COLOURS):
        for index in range(PER_CLASS):
            paths.append(_write_image(folder / f"train-{label}-{index}.png", colour, label, rng))
            labels.append(label)
        test_paths.append(_write_image(folder / f"test-{label}.png", colour, label, rng))
    validation_rows = np.array([row for label in range(3) for row in (label * PER_CLASS, label * PER_CLASS + 1)])
    return paths, np.array(labels), validation_rows, test_paths


def run(split, folder: Path, settings: FinetuneSettings = SETTINGS, spec: BackboneSpec = SPEC, **kwargs) -> dict:
    paths, labels, validation_rows, _ = split
    return finetune(spec, paths, labels, validation_rows, settings, out_weights=folder / "weights.safetensors",
                    out_record=folder / "record.json", checkpoint_dir=folder / "checkpoint", threads=1,
                    **kwargs)  # fmt: skip


@pytest.fixture(scope="module")
def finished(split, tmp_path_factory) -> tuple[Path, dict]:
    """One uninterrupted run of 2 epochs."""
    folder = tmp_path_factory.mktemp("finished")
    return folder, run(split, folder, record_extra={"dataset": "tiny", "split": "80-20"})


def base_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # as fine-tuning builds random base weights (seed 0)
    return get_backbone(SPEC.arch).build().state_dict()


def test_the_weights_change_and_load_back_as_a_weights_file(finished):
    folder, _ = finished
    saved, base = load_file(folder / "weights.safetensors"), base_state()
    assert saved.keys() == base.keys()  # the whole model as entry.build() names it, no head
    assert not torch.equal(saved["_conv_stem.weight"], base["_conv_stem.weight"])
    assert torch.equal(saved["_fc.weight"], base["_fc.weight"])  # the classifier is not part of the trunk
    network = build_backbone(BackboneSpec(SPEC.arch, weights=str(folder / "weights.safetensors"), pooling="avg",
                                          image_size=32))  # fmt: skip
    loaded = network.trunk.model.state_dict()
    assert all(torch.equal(loaded[key], saved[key]) for key in saved)
    assert not (folder / "checkpoint").exists()


def test_the_record_holds_the_run_and_each_epochs_metrics(finished):
    folder, returned = finished
    record = json.loads((folder / "record.json").read_text())
    assert record.keys() >= RECORD_FIELDS
    assert record["base"]["weights"] == "random" and record["settings"] == SETTINGS.as_dict()
    assert (record["device"], record["precision"], record["threads"]) == ("cpu", "fp32", 1)
    assert (record["n_train"], record["n_validation"], record["n_classes"]) == (18, 6, 3)
    assert {"torch", "torchvision"} <= record["library_versions"].keys()
    assert (record["dataset"], record["split"]) == ("tiny", "80-20")  # record_extra
    assert [epoch["epoch"] for epoch in record["epochs"]] == [1, 2]
    for epoch in record["epochs"]:
        assert epoch.keys() >= EPOCH_FIELDS
        assert 0 < epoch["validation_map"] <= 1 and 0 <= epoch["validation_accuracy"] <= 1
        assert np.isfinite(epoch["train_loss"]) and epoch["images_per_second"] > 0
    best = max(record["epochs"], key=lambda epoch: epoch["validation_map"])
    assert record["best_epoch"] == best["epoch"] and record["stopped_early"] is False
    assert record["resumed_after_epoch"] is None and record["blocks"] and record["frozen_blocks"] == []
    assert returned["epochs"] == record["epochs"]


def test_only_the_training_split_images_are_opened(split, tmp_path, monkeypatch):
    paths, _, _, test_paths = split
    opened: list[Path] = []
    real = finetune_data.load_rgb_image

    def recording(path, *args, **kwargs):
        opened.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(finetune_data, "load_rgb_image", recording)
    monkeypatch.setattr(finetune_data, "DECODED_CACHE_BYTES", 0)  # decoded every epoch: every reading is seen
    run(split, tmp_path, replace(SETTINGS, epochs=1))
    assert opened and set(opened) <= set(paths)
    assert not set(opened) & set(test_paths)


def stop_after_the_first_checkpoint(monkeypatch) -> Callable[..., None]:
    """Interrupt a run once its first checkpoint is written; returns the real save, to put back."""
    real_save = finetune_module.save_checkpoint

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        raise Interrupted

    monkeypatch.setattr(finetune_module, "save_checkpoint", save_then_stop)
    return real_save


def test_a_resumed_run_gives_the_weights_of_an_uninterrupted_run(split, finished, tmp_path, monkeypatch):
    real_save = stop_after_the_first_checkpoint(monkeypatch)
    with pytest.raises(Interrupted):
        run(split, tmp_path)
    assert (tmp_path / "checkpoint" / CHECKPOINT_FILE).is_file() and not (tmp_path / "weights.safetensors").exists()
    monkeypatch.setattr(finetune_module, "save_checkpoint", real_save)
    record = run(split, tmp_path)

    assert record["resumed_after_epoch"] == 1
    uninterrupted_folder, uninterrupted = finished
    resumed, straight = (
        load_file(tmp_path / "weights.safetensors"),
        load_file(uninterrupted_folder / "weights.safetensors"),
    )
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[key], straight[key]) for key in straight)
    for ours, theirs in zip(record["epochs"], uninterrupted["epochs"], strict=True):
        assert (ours["train_loss"], ours["validation_map"]) == (theirs["train_loss"], theirs["validation_map"])
    assert not (tmp_path / "checkpoint").exists()


def test_the_best_epochs_weights_are_written_when_training_stops_early(split, tmp_path, monkeypatch):
    # validation mAPs: the base weights, then epochs 1, 2, 3: epoch 1 is the best, and patience 2 stops after 3
    scores = iter([0.5, 0.6, 0.4, 0.3])
    monkeypatch.setattr(finetune_module, "retrieval_map", lambda *args: next(scores))
    real_save, saves = finetune_module.save_checkpoint, itertools.count(1)

    def stop_after_epoch_2(*args, **kwargs):  # the checkpoint then holds the best epoch's weights besides the last
        real_save(*args, **kwargs)
        if next(saves) == 2:
            raise Interrupted

    monkeypatch.setattr(finetune_module, "save_checkpoint", stop_after_epoch_2)
    with pytest.raises(Interrupted):
        run(split, tmp_path / "stopped", replace(SETTINGS, epochs=5, patience=2))
    record = run(split, tmp_path / "stopped", replace(SETTINGS, epochs=5, patience=2))
    assert (record["best_epoch"], record["stopped_early"], len(record["epochs"])) == (1, True, 3)
    assert record["base_validation_map"] == 0.5

    one_epoch = iter([0.5, 0.6])  # the base weights, then an epoch that beats them
    monkeypatch.setattr(finetune_module, "retrieval_map", lambda *args: next(one_epoch))
    monkeypatch.setattr(finetune_module, "save_checkpoint", real_save)
    run(split, tmp_path / "one", replace(SETTINGS, epochs=1))
    best, one = (
        load_file(tmp_path / "stopped" / "weights.safetensors"),
        load_file(tmp_path / "one" / "weights.safetensors"),
    )
    assert all(torch.equal(best[key], one[key]) for key in one)


def test_the_base_weights_are_written_where_no_epoch_beats_them_on_validation(split, tmp_path, monkeypatch):
    scores = iter([0.7, 0.6, 0.5])  # the base weights, then two epochs that do worse
    monkeypatch.setattr(finetune_module, "retrieval_map", lambda *args: next(scores))
    record = run(split, tmp_path, replace(SETTINGS, epochs=2))
    assert record["kept_base_weights"] is True and record["best_validation_map"] == 0.6
    written = load_file(tmp_path / "weights.safetensors")
    entry = get_backbone(SPEC.arch)
    torch.manual_seed(0)  # the run's seed: random base weights
    entry.load_weights(base := entry.build(), SPEC.weights)
    assert all(torch.equal(written[key], value) for key, value in base.state_dict().items())


def test_a_checkpoint_of_other_settings_is_not_resumed(split, tmp_path, monkeypatch):
    real_save = stop_after_the_first_checkpoint(monkeypatch)
    with pytest.raises(Interrupted):
        run(split, tmp_path, replace(SETTINGS, lr=1e-3))
    monkeypatch.setattr(finetune_module, "save_checkpoint", real_save)
    assert run(split, tmp_path, replace(SETTINGS, epochs=1))["resumed_after_epoch"] is None


@pytest.mark.parametrize("loss", ["ce", "cosface", "arcface"])
def test_each_loss_trains_an_epoch(split, tmp_path, loss):
    record = run(split, tmp_path, replace(SETTINGS, epochs=1, loss=loss))
    assert record["settings"]["loss"] == loss and np.isfinite(record["epochs"][0]["train_loss"])
    assert (tmp_path / "weights.safetensors").is_file()


def test_frozen_blocks_keep_their_weights_and_unpooled_specs_train_on_average_pooling(split, tmp_path):
    record = run(split, tmp_path, replace(SETTINGS, epochs=1, freeze_until=3), spec=replace(SPEC, pooling="none"))
    assert record["frozen_blocks"] == ["model._conv_stem", "model._bn0", "model._blocks.0"]
    assert record["trained_pooling"] == "avg" and "pooling_note" in record
    saved, base = load_file(tmp_path / "weights.safetensors"), base_state()
    frozen = [key for key in base if key.startswith(("_conv_stem.", "_bn0.", "_blocks.0."))]
    assert frozen and all(torch.equal(saved[key], base[key]) for key in frozen)
    assert not torch.equal(saved["_blocks.1._project_conv.weight"], base["_blocks.1._project_conv.weight"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda labels, rows: (labels[:17], rows[rows < 17]), "class 2 has one image in the training split of tiny"),
        (lambda labels, rows: (labels, rows[:0]), "no images of the training split of tiny are held out"),
        (lambda labels, rows: (labels, rows[:4]), "class 2 has no image among the validation rows"),
        (lambda labels, rows: (labels, np.union1d(rows, np.arange(16, 24))), "class 2 has all its images"),
    ],
    ids=["one image", "no validation", "class not validated", "class all validation"],
)
def test_input_too_small_for_a_validation_part_is_refused_before_training(split, tmp_path, change, message):
    paths, labels, rows, _ = split
    labels, rows = change(labels, np.unique(rows))
    with pytest.raises(FinetuneError, match=message):
        finetune(SPEC, paths[: len(labels)], labels, rows, SETTINGS, out_weights=tmp_path / "w.safetensors",
                 out_record=tmp_path / "r.json", checkpoint_dir=tmp_path / "checkpoint", threads=1,
                 record_extra={"dataset": "tiny"})  # fmt: skip
    assert not list(tmp_path.iterdir())  # no weights, record or checkpoint


@pytest.mark.parametrize(
    ("batch_size", "image_size", "advice"),
    [(100_000, 224, r"set batch_size to \d+ or less"), (8, 65_536, "even batches of 2 images do not fit")],
)
def test_settings_that_cannot_fit_in_memory_are_refused_before_training(
    split, tmp_path, batch_size, image_size, advice
):
    huge = replace(SETTINGS, batch_size=batch_size, image_size=image_size)
    expected = rf"batches of {batch_size} images of {image_size} px needs about [\d.]+ GB on cpu, but [\d.]+ GB is "
    with pytest.raises(FinetuneError, match=f"{expected}available RAM: {advice}"):
        run(split, tmp_path, huge)
    assert not list(tmp_path.iterdir())
    _, labels, rows, _ = split
    check_finetune_input(labels, rows, SETTINGS, SPEC, "cpu")  # the small settings fit


def test_settings_name_unknown_keys_and_wrong_values():
    with pytest.raises(FinetuneError, match="unknown fine-tuning settings 'epoch', 'lr_head'"):
        FinetuneSettings.from_mapping({"epoch": 3, "lr_head": 1.0})
    with pytest.raises(FinetuneError, match="loss must be one of ce, cosface, arcface"):
        FinetuneSettings.from_mapping({"loss": "triplet"})
    with pytest.raises(FinetuneError, match="batch_size must be an integer"):
        FinetuneSettings.from_mapping({"batch_size": "32"})
    settings = FinetuneSettings.from_mapping({"lr": "1e-4", "epochs": 3, "image_size": 64})  # YAML reads 1e-4 as text
    assert (settings.lr, settings.epochs, settings.image_size) == (1e-4, 3, 64)
    assert FinetuneSettings.from_mapping(settings.as_dict()) == settings
    with pytest.raises(FinetuneError, match="freeze_until is 99 but the efficientnet_lite0 trunk has 20 blocks"):
        check_finetune_input(np.array([0, 0, 1, 1]), np.array([0, 2]), replace(SETTINGS, freeze_until=99), SPEC)


def test_retrieval_map_ranks_by_the_distance_of_normalised_features():
    gallery = np.array([[1.0, 0.0], [0.0, 5.0], [3.0, 0.1], [0.1, 1.0]])
    gallery_labels = np.array([0, 1, 0, 1])
    queries, query_labels = np.array([[2.0, 0.0], [1.0, 1.2]]), np.array([0, 0])
    # query 1 ranks 0, 2 (relevant), 3, 1: AP 1; query 2 ranks 3, 1, 2, 0 (cosines .83, .77, .67, .64 to the
    # query): relevant at ranks 3 and 4: AP (1/3 + 2/4) / 2
    second = (1 / 3 + 2 / 4) / 2
    assert retrieval_map(queries, query_labels, gallery, gallery_labels) == pytest.approx((1 + second) / 2)
