"""One prepared network: queries go through what the gallery went through; `precision: auto` by measurement.

Every test forces the precision it needs (bf16 runs on every CPU, emulated where there is no
AVX-512 BF16) or fakes the trial's clock, so no result depends on the CPU the suite runs on.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cbir.extraction import precision as precision_module
from cbir.extraction.features import extract_to_hdf5
from cbir.extraction.network import RecordError, prepare_from_record, prepare_network
from cbir.extraction.precision import PrecisionChoice, choose_precision, decide, follow_recorded, resolve_precision
from cbir.extraction.registry import BackboneSpec
from cbir.io import load_features, read_attrs
from cbir.search.query import Embedder

CPU = torch.device("cpu")
LITE = BackboneSpec("efficientnet_lite0", "pypi", "avg", 64)
RANDOM_VGG = BackboneSpec("vgg16", "random", "avg", 32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def extract(folder: Path, out: Path, spec: BackboneSpec, precision: str, seed: int = 0) -> tuple[list[Path], Path]:
    paths = sorted(folder.rglob("*.png"))[::3]
    extract_to_hdf5([str(p) for p in paths], [p.name for p in paths], [0] * len(paths), spec, out, batch_size=4,
                    num_workers=0, device="cpu", precision=precision, seed=seed, progress=False)  # fmt: skip
    return paths, out


@pytest.mark.parametrize(("spec", "seed"), [(LITE, 0), (RANDOM_VGG, 1)], ids=["pretrained", "random-seed-1"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_query_features_of_gallery_images_are_the_stored_ones(image_folder, tmp_path, spec, seed, precision):
    paths, out = extract(image_folder, tmp_path / "f.h5", spec, precision, seed)
    stored = load_features(out)
    assert stored.attrs["precision"] == precision and stored.attrs["seed"] == seed
    embedder = Embedder(stored.attrs, "cpu")  # the record, as cbir query and cbir serve read it
    assert embedder.notice is None
    assert (embedder.prepared.precision, embedder.prepared.seed) == (precision, seed)
    queried, errors = embedder.embed_paths(paths)  # one image at a time, unlike the batches of 4 stored
    assert errors == [None] * len(paths)
    if precision == "fp32":
        # the same up to fp32 rounding (a batch of one may take another kernel than a batch of four)
        np.testing.assert_allclose(queried, stored.features, rtol=1e-5, atol=1e-5 * np.abs(stored.features).max())
    else:
        assert cosines(queried, stored.features).min() >= 0.9999
        fp32 = Embedder({**stored.attrs, "precision": "fp32"}, "cpu").embed_paths(paths)[0]
        assert not np.array_equal(queried, fp32)  # bf16 really ran


def test_a_random_network_is_rebuilt_with_its_recorded_seed(image_folder, tmp_path):
    paths, out = extract(image_folder, tmp_path / "f.h5", RANDOM_VGG, "fp32", seed=1)
    stored = load_features(out)
    other_seed = Embedder({**stored.attrs, "seed": 0}, "cpu").embed_paths(paths[:2])[0]
    assert cosines(other_seed, stored.features[:2]).max() < 0.999  # seed 0 is another network


def test_extraction_records_the_precision_its_reason_and_what_was_asked(image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_may_have_fast_bf16", lambda: True)
    monkeypatch.setattr(precision_module, "measure", lambda timer, precisions: {"fp32": 1.0, "bf16": 0.5})
    _, out = extract(image_folder, tmp_path / "auto.h5", LITE, "auto")
    with h5py.File(out) as f:
        attrs = read_attrs(f)
    assert attrs["precision"] == "bf16" and attrs["precision_requested"] == "auto"
    assert "measured" in attrs["precision_reason"] and "2.00x fp32" in attrs["precision_reason"]
    assert Embedder(attrs, "cpu").prepared.precision == "bf16"  # followed, not resolved again


def test_auto_keeps_fp32_unless_reduced_precision_is_measured_faster():
    # the Intel Xeon with AVX-512 BF16 and no AMX: bf16 slower, so fp32
    slower = decide({"fp32": 32 / 5.2, "bf16": 32 / 4.3}, batch=32, where="a CPU")
    assert slower.precision == "fp32" and "fp32 5.2 images/s, bf16 4.3 images/s" in slower.reason
    assert decide({"fp32": 1.0, "bf16": 0.95}, batch=4, where="a CPU").precision == "fp32"  # within noise
    assert decide({"fp32": 1.0, "bf16": 0.5}, batch=4, where="a CPU").precision == "bf16"
    on_gpu = decide({"fp32": 1.0, "fp16": 0.3, "bf16": 0.4}, batch=32, where="a GPU")
    assert on_gpu.precision == "fp16" and on_gpu.images_per_s["fp16"] == pytest.approx(32 / 0.3)


def test_the_trial_runs_once_per_machine_and_backbone(monkeypatch, tmp_path):
    monkeypatch.setenv("CBIR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(precision_module, "cpu_may_have_fast_bf16", lambda: True)
    calls: list[str] = []

    def timer(precision: str) -> float:
        calls.append(precision)
        return {"fp32": 0.2, "bf16": 0.1}[precision]

    backbone = {"arch": "vgg16", "pooling": "none", "image_size": 224}
    first = choose_precision(torch.nn.Identity(), CPU, backbone, batch=4, timer=timer)
    assert first.precision == "bf16" and calls.count("fp32") == 1 + precision_module.TRIAL_ROUNDS
    calls.clear()
    again = choose_precision(torch.nn.Identity(), CPU, backbone, batch=4, timer=timer)
    assert again.precision == "bf16" and calls == [] and "cached in" in again.reason
    choose_precision(torch.nn.Identity(), CPU, {**backbone, "image_size": 128}, batch=4, timer=timer)
    assert calls  # another backbone setting is measured on its own
    assert (tmp_path / "cache" / precision_module.CACHE_FILE).is_file()


def test_without_native_bf16_auto_is_fp32_without_a_trial(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_may_have_fast_bf16", lambda: False)

    def timer(precision: str) -> float:
        raise AssertionError("no trial expected")

    choice = choose_precision(torch.nn.Identity(), CPU, {"arch": "vgg16", "image_size": 32}, batch=4, timer=timer)
    assert choice.precision == "fp32" and "only emulated" in choice.reason


def test_a_real_trial_on_this_cpu_gives_a_precision_it_offers(monkeypatch, tmp_path):
    monkeypatch.setenv("CBIR_CACHE_DIR", str(tmp_path))
    prepared = prepare_network(BackboneSpec("efficientnet_lite0", "random", "avg", 32), device="cpu",
                               precision="auto", batch_size=2)  # fmt: skip
    assert prepared.precision in {"fp32", "bf16"} and prepared.precision_reason.startswith("auto:")


def test_fp16_is_not_offered_on_a_cpu():
    choice = resolve_precision("fp16", CPU, torch.nn.Identity(), {}, batch=1)
    assert choice == PrecisionChoice("fp32", choice.reason) and "no native fp16" in choice.reason
    assert resolve_precision("bf16", CPU, torch.nn.Identity(), {}, batch=1).precision == "bf16"


def test_a_record_the_cpu_cannot_follow_says_so_with_the_cosine_to_expect():
    assert follow_recorded("bf16", CPU) == ("bf16", None)
    precision, notice = follow_recorded("fp16", CPU)  # extracted on a GPU, queried on a CPU
    assert precision == "fp32"
    assert "fp16" in notice and "fp32" in notice and "expected cosine" in notice
    precision, notice = follow_recorded(["bf16", "fp32"], CPU)  # shards that chose differently
    assert precision == "bf16" and "several precisions" in notice
    with pytest.raises(ValueError, match="not one of"):
        follow_recorded("int3", CPU)


def test_a_gallery_extracted_in_fp16_is_queried_in_fp32_with_a_notice(image_folder, tmp_path):
    _, out = extract(image_folder, tmp_path / "f.h5", LITE, "fp32")
    record = {**load_features(out).attrs, "precision": "fp16", "device": "cuda"}
    prepared = prepare_from_record(record, "cpu")
    assert prepared.precision == "fp32" and "fp16" in prepared.notice


def test_a_record_that_cannot_be_followed_is_a_clear_error(image_folder, tmp_path):
    _, out = extract(image_folder, tmp_path / "f.h5", LITE, "fp32")
    record = load_features(out).attrs
    with pytest.raises(RecordError, match="lacks precision"):
        prepare_from_record({k: v for k, v in record.items() if k != "precision"}, "cpu")
    changed = {**record, "preprocessing": {**record["preprocessing"], "interpolation": "nearest"}}
    with pytest.raises(RecordError, match="interpolation"):
        prepare_from_record(changed, "cpu")
    with pytest.raises(RecordError, match="1-D"):
        prepare_from_record({**record, "feature_dim": 1}, "cpu")
