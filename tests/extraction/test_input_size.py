"""The input size of small images, chosen by validation on training images: candidates, the judge, the gate, the
sample, the choice, and the engine and extraction following it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cbir.extraction import input_size
from cbir.extraction.engines import prepare_engine, read_engine
from cbir.extraction.input_size import (
    SizeTrial,
    candidate_sizes,
    choose_input_size,
    leave_one_out_aps,
    median_longer_side,
    shortfall_bound,
    trial_problem,
    trial_sample,
)
from cbir.extraction.network import prepare_network
from cbir.extraction.registry import BackboneSpec

from helpers import make_image_folder

SETTINGS = {"choose": "auto", "min_images": 100, "tolerance": 0.01, "per_class": 5, "max_images": 500}
LITE = BackboneSpec("efficientnet_lite2", "random", "avg", 260)


def manifest_of(n: int, side: int, n_classes: int = 4) -> pd.DataFrame:
    labels = np.arange(n) % n_classes
    return pd.DataFrame({"path": [f"{i}.png" for i in range(n)], "label": labels, "width": side, "height": side // 2})


def brute_force_map(features: np.ndarray, labels: np.ndarray) -> float:
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    aps = []
    for q in range(len(labels)):
        others = [i for i in range(len(labels)) if i != q]
        ranked = sorted(others, key=lambda i: (-(unit[q] @ unit[i]), i))
        relevant = [labels[i] == labels[q] for i in ranked]
        if not any(relevant):
            continue
        hits, total = 0, 0.0
        for rank, is_relevant in enumerate(relevant, start=1):
            if is_relevant:
                hits += 1
                total += hits / rank
        aps.append(total / sum(relevant))
    return float(np.mean(aps))


def test_candidates_are_the_configured_size_then_three_quarters_and_half_in_steps_of_32():
    assert candidate_sizes(260) == [260, 192, 128]
    assert candidate_sizes(224) == [224, 160, 128]
    assert candidate_sizes(128) == [128, 96, 64]
    assert candidate_sizes(64) == [64]  # nothing below 64 px
    assert candidate_sizes(32) == [32]


def test_leave_one_out_aps_are_every_image_querying_the_others():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 40)
    labels[-1] = 9  # a class of one image: it queries nothing relevant
    features = rng.normal(size=(40, 6)) + labels[:, None] * 0.3
    aps = leave_one_out_aps(features, labels)
    assert np.isnan(aps[-1]) and np.isfinite(aps[:-1]).all()
    assert np.nanmean(aps) == pytest.approx(brute_force_map(features, labels))
    separated = np.eye(3)[labels[:-1] % 3] + rng.normal(scale=0.01, size=(39, 3))
    assert np.nanmean(leave_one_out_aps(separated, labels[:-1])) == pytest.approx(1.0)


def test_the_shortfall_bound_is_the_paired_mean_difference_plus_its_one_sided_95_percent_margin():
    best = np.array([0.9, 0.8, 0.7, 0.6, np.nan])
    other = np.array([0.8, 0.8, 0.6, 0.6, 0.5])  # the NaN query pairs with nothing
    differences = np.array([0.1, 0.0, 0.1, 0.0])
    expected = differences.mean() + 1.645 * differences.std(ddof=1) / 2
    assert shortfall_bound(best, other) == pytest.approx(expected)
    assert shortfall_bound(best, best) == 0.0
    assert shortfall_bound(best[:1], other[:1]) == float("inf")  # one query: no margin to speak of


def test_the_trial_runs_only_for_many_images_smaller_than_the_input():
    assert trial_problem(LITE, manifest_of(200, 28), SETTINGS) is None
    assert "never" in trial_problem(LITE, manifest_of(200, 28), {**SETTINGS, "choose": "never"})
    assert "min_images (100)" in trial_problem(LITE, manifest_of(99, 28), SETTINGS)
    assert "not smaller than the network's 260 px" in trial_problem(LITE, manifest_of(200, 400), SETTINGS)
    assert "no candidate size below 64" in trial_problem(BackboneSpec("vgg16", "random", "avg", 64),
                                                         manifest_of(200, 28), SETTINGS)  # fmt: skip
    assert "one input size only" in trial_problem(BackboneSpec("vit_b_16", "random", "avg", 224),
                                                  manifest_of(200, 28), SETTINGS)  # fmt: skip
    assert median_longer_side(manifest_of(10, 28).drop(columns=["width"])) is None


def test_the_sample_is_seeded_stratified_and_drawn_from_the_pool_only():
    manifest = manifest_of(400, 28, n_classes=4)
    pool = np.arange(0, 400, 2)  # the training images of every split
    paths, labels = trial_sample(manifest, pool, SETTINGS, seed=3)
    rows = [int(p.removesuffix(".png")) for p in paths]
    assert set(rows) <= set(pool.tolist())
    assert np.bincount(labels, minlength=4).tolist() == [5, 0, 5, 0]  # the pool holds classes 0 and 2 only
    again = trial_sample(manifest, pool, SETTINGS, seed=3)
    assert again[0] == paths and np.array_equal(again[1], labels)
    assert trial_sample(manifest, pool, SETTINGS, seed=4)[0] != paths
    capped = trial_sample(manifest, np.arange(400), {**SETTINGS, "per_class": 50, "max_images": 40}, seed=3)
    assert np.bincount(capped[1]).tolist() == [10, 10, 10, 10]
    assert trial_sample(manifest, np.arange(0, 400, 4), SETTINGS, seed=3) is None  # one class only


def fake_trial(monkeypatch, aps_by_size):
    """A trial whose sizes score ``aps_by_size`` per query (the network and the images are not run)."""
    monkeypatch.setattr(input_size, "build_backbone", lambda spec, seed: None)
    monkeypatch.setattr(input_size, "preprocessing", lambda spec, network: None)
    monkeypatch.setattr(input_size, "_features", lambda run, transform, paths, size: np.full((2, 1), size))
    monkeypatch.setattr(input_size, "leave_one_out_aps", lambda features, labels: aps_by_size[int(features[0, 0])])


@pytest.mark.parametrize(("tolerance", "chosen"), [(0.0, 260), (0.05, 192), (1.0, 128)])
def test_the_smallest_size_within_the_tolerance_of_the_best_is_chosen(monkeypatch, tolerance, chosen):
    scores = {260: 0.80, 192: 0.77, 128: 0.70}
    fake_trial(monkeypatch, {size: np.full(50, score) for size, score in scores.items()})
    choice = choose_input_size(LITE, SizeTrial(["a", "b"], np.array([0, 1]), tolerance), runner=lambda n, s: None)
    assert choice.size == chosen
    assert choice.map_by_size == pytest.approx(scores)
    assert f"input size {chosen} px chosen on 2 training images" in choice.reason


def test_a_smaller_size_whose_loss_is_uncertain_is_not_chosen(monkeypatch):
    rng = np.random.default_rng(1)
    best = rng.uniform(0.3, 0.9, 40)
    # 0.005 lower on average, within the tolerance, but query by query up to 0.2 either way: 40 queries cannot
    # tell that it loses less than 0.01
    noisy = best - 0.005 + rng.choice([-0.2, 0.2], 40)
    noisy += best.mean() - 0.005 - noisy.mean()
    fake_trial(monkeypatch, {260: best, 192: noisy, 128: best - 0.3})
    choice = choose_input_size(LITE, SizeTrial(["a"] * 40, np.zeros(40), 0.01), runner=lambda n, s: None)
    assert choice.map_by_size[192] == pytest.approx(choice.map_by_size[260] - 0.005)
    assert choice.size == 260


@pytest.mark.parametrize("engine", ["torch", "openvino"])
def test_the_engine_is_prepared_at_the_chosen_size_and_extraction_follows_it(tmp_path, monkeypatch, engine):
    if engine == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO is not installed")
    folder = make_image_folder(tmp_path / "images", per_class=4)
    paths = sorted(str(p) for p in folder.glob("*/*.png"))
    labels = np.array([hash(p.split("/")[-2]) % 1000 for p in paths])
    spec = BackboneSpec("vgg16", "random", "avg", 128)
    # the smaller sizes judged as good as the configured one: the smallest, 64 px, is chosen
    monkeypatch.setattr(input_size, "leave_one_out_aps", lambda features, labels: np.full(len(labels), 0.5))
    sizes = []
    original = input_size._features
    monkeypatch.setattr(input_size, "_features", lambda *args: sizes.append(args[-1]) or original(*args))
    choice = prepare_engine(spec, tmp_path / "engine", engine=engine, precision="fp32", calibration_paths=paths,
                            holdout_paths=paths, size_trial=SizeTrial(paths, labels, 0.01))  # fmt: skip
    assert sizes == [128, 96, 64]
    record = json.loads((tmp_path / "engine" / "engine.json").read_text())
    assert choice.image_size == record["image_size"] == 64
    assert "128 px mAP 0.5000 (at most 0.0000 below" in record["image_size_reason"]
    prepared = prepare_network(spec, device="cpu", precision="fp32", engine=read_engine(tmp_path / "engine"))
    assert prepared.record()["image_size"] == 64 and prepared.engine == engine
    assert prepared.spec.image_size == 64
    assert prepared.embed(torch.rand(2, 3, 64, 64)).shape == (2, prepared.feature_dim)
    assert prepare_network(spec, device="cpu", precision="fp32").record()["image_size"] == 128
