"""Extraction engines: OpenVINO fp32/int8 prepared once, checked against torch fp32, followed by queries."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cbir.data.images import load_rgb_image
from cbir.extraction import engines
from cbir.extraction.engines import (
    EngineError,
    calibration_pool,
    calibration_sample,
    int8_not_worth,
    pick_fastest,
    prepare_engine,
    read_engine,
)
from cbir.extraction.network import RecordError, prepare_from_record, prepare_network
from cbir.extraction.registry import BackboneSpec
from cbir.pipeline.config import ConfigError, load_schema, validate_config

from helpers import REPO, make_image_folder, tiny_config

pytest.importorskip("openvino", reason="OpenVINO is not installed")
SPEC = BackboneSpec("vgg16", "random", "avg", 32)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    folder = make_image_folder(tmp_path_factory.mktemp("engine") / "images", per_class=8)
    return sorted(str(p) for p in folder.glob("*/*.png"))


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def embed(prepared, paths: list[str]) -> np.ndarray:
    return prepared.embed(torch.stack([prepared.preprocess(load_rgb_image(p)) for p in paths]))


def test_calibration_images_are_training_images_of_every_split():
    labels = np.repeat(np.arange(4), 25)
    manifest = pd.DataFrame({"label": labels, "path": [f"{i}.png" for i in range(100)]})
    pool = set(calibration_pool(manifest, ["60-40", "90-10", "80-20"], seed=3))
    from cbir.data.split import make_split

    for fraction in (0.6, 0.8, 0.9):
        train = set(np.flatnonzero(make_split(labels, fraction, 3)))
        assert pool <= train
    assert pool == set(np.flatnonzero(make_split(labels, 0.6, 3)))  # the ratio splits are nested
    calibration, holdout = calibration_sample(manifest, ["60-40"], 3, n_calibration=20)
    assert len(calibration) == 20 and not set(calibration) & set(holdout)
    assert calibration_sample(manifest, ["60-40"], 3, 20) == (calibration, holdout)  # seeded
    official = manifest.assign(official_subset=np.where(np.arange(100) % 2, "train", "test"))
    assert all(i % 2 for i in calibration_pool(official, ["official"], seed=3))


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_an_openvino_engine_gives_the_torch_features_and_queries_follow_it(images, tmp_path, precision):
    choice = prepare_engine(SPEC, tmp_path / "engine", engine="openvino", precision=precision,
                            calibration_paths=images[::2], holdout_paths=images[1::2], threads=1)  # fmt: skip
    assert (choice.engine, choice.precision) == ("openvino", precision)
    assert (tmp_path / "engine" / "model.xml").is_file()
    assert json.loads((tmp_path / "engine" / "engine.json").read_text())["precision"] == precision
    assert choice.calibration_images == (len(images[::2]) if precision == "int8" else 0)

    reference = embed(prepare_network(SPEC, precision="fp32", device="cpu"), images)
    prepared = prepare_network(SPEC, precision="auto", device="cpu", engine=read_engine(tmp_path / "engine"))
    assert prepared.engine == "openvino" and prepared.precision == precision
    features = embed(prepared, images)
    assert cosine(features, reference).min() >= (0.9999 if precision == "fp32" else 0.99)

    # a query rebuilds the same engine from the feature record, the model path relative to the run's folder
    record = {**prepared.record(), "engine_model": "engine/model.xml"}
    followed = prepare_from_record(record, "cpu", root=tmp_path)
    assert followed.engine == "openvino" and followed.notice is None
    np.testing.assert_allclose(embed(followed, images[:4]), features[:4], rtol=1e-4, atol=1e-5)


def test_a_query_without_the_openvino_model_runs_torch_fp32_and_says_so(images, tmp_path):
    prepare_engine(SPEC, tmp_path / "engine", engine="openvino", precision="fp32",
                   calibration_paths=images, holdout_paths=images[:4], threads=1)  # fmt: skip
    prepared = prepare_network(SPEC, device="cpu", engine=read_engine(tmp_path / "engine"))
    followed = prepare_from_record({**prepared.record(), "engine_model": "elsewhere/model.xml"}, "cpu", tmp_path)
    assert followed.engine == "torch" and followed.precision == "fp32"
    assert "model.xml' is missing: queries run in torch fp32" in followed.notice


def test_vnni_is_read_from_the_cpu_flags_within_onednns_cap(monkeypatch):
    from cbir import hardware

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    for flags, expected in [({"avx2", "avx512_vnni"}, True), ({"avx2", "avx_vnni"}, True), ({"avx2", "fma"}, False),
                            ({"amx_int8"}, True), (set(), False)]:  # fmt: skip
        monkeypatch.setattr(hardware, "cpu_flags", lambda flags=flags: flags)
        assert hardware.cpu_has_vnni() is expected, flags
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "avx512_vnni"})
    for cap, expected in [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_VNNI", True), ("AVX2_VNNI", True)]:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert hardware.cpu_has_vnni() is expected, cap


def test_int8_is_quantized_for_the_cpus_dot_products_and_refused_where_they_differ(images, tmp_path, monkeypatch):
    quantized_for = []
    real = engines.quantize_int8

    def spy(model, calibration, vnni=True):
        quantized_for.append(vnni)
        return real(model, calibration, vnni)

    monkeypatch.setattr(engines, "quantize_int8", spy)
    folders = {}
    for vnni in (True, False):
        monkeypatch.setattr(engines, "cpu_has_vnni", lambda vnni=vnni: vnni)
        folders[vnni] = tmp_path / f"vnni-{vnni}"
        prepare_engine(SPEC, folders[vnni], engine="openvino", precision="int8", calibration_paths=images[::2],
                       holdout_paths=images[1::2], threads=1)  # fmt: skip
        assert read_engine(folders[vnni])["int8_needs_vnni"] is vnni
    assert quantized_for == [True, False]  # without VNNI: 7-bit weights in every layer (NNCF's overflow fix)

    # a CPU without VNNI (cpu_has_vnni is False now) runs the 7-bit model, and refuses the VNNI one
    prepare_network(SPEC, device="cpu", engine=read_engine(folders[False]))
    with pytest.raises(RecordError, match=r"quantized on a CPU with VNNI, and this CPU .* has none.*on CPUs with VNNI"):
        prepare_network(SPEC, device="cpu", engine=read_engine(folders[True]))
    # its queries run in torch fp32, and say why
    monkeypatch.setattr(engines, "cpu_has_vnni", lambda: True)
    record = prepare_network(SPEC, device="cpu", engine=read_engine(folders[True])).record()
    monkeypatch.setattr(engines, "cpu_has_vnni", lambda: False)
    followed = prepare_from_record({**record, "engine_model": "vnni-True/model.xml"}, "cpu", root=tmp_path)
    assert (
        followed.engine == "torch" and "has none" in followed.notice and "queries run in torch fp32" in followed.notice
    )


def test_int8_below_the_quality_bar_is_refused_with_its_cosine(images, tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "QUALITY_BAR_COSINE", 1.01)  # no int8 model reaches it
    with pytest.raises(EngineError, match=r"openvino-int8 gives features with mean cosine 0\.9\d+ to torch fp32"):
        prepare_engine(SPEC, tmp_path / "engine", engine="openvino", precision="int8",
                       calibration_paths=images, holdout_paths=images[:4], threads=1)  # fmt: skip


def test_auto_never_takes_a_path_that_is_not_clearly_faster_than_torch_fp32():
    assert pick_fastest({"torch-fp32": 10.0, "openvino-int8": 10.5}, "auto") == "torch-fp32"
    assert pick_fastest({"torch-fp32": 10.0, "openvino-int8": 30.0, "openvino-fp32": 12.0}, "auto") == "openvino-int8"
    assert pick_fastest({"openvino-fp32": 10.0, "openvino-int8": 10.5}, "openvino") == "openvino-int8"


def test_int8_is_calibrated_only_where_it_could_pay_back():
    rates = {"openvino-fp32": 300.0, "openvino-bf16": 750.0, "torch-fp32": 130.0}
    reason = int8_not_worth(1797, rates)  # the default digits: 2.4 s at the fastest path
    assert reason.startswith("int8 not calibrated: 1797 images take about 2 s at openvino-bf16 (750 images/s)")
    assert int8_not_worth(60 * 750, rates) == ""  # a minute's extraction: worth trying
    assert int8_not_worth(10, {}) == ""


def test_auto_skips_int8_for_a_small_dataset_but_not_when_int8_is_asked_for(images, tmp_path):
    auto = prepare_engine(SPEC, tmp_path / "auto", engine="openvino", precision="auto", calibration_paths=images,
                          holdout_paths=images[:4], threads=1, n_images=len(images))  # fmt: skip
    assert "openvino-int8" not in auto.cosine_to_fp32 and "openvino-fp32" in auto.cosine_to_fp32
    assert f"int8 not calibrated: {len(images)} images take about 0 s" in auto.reason
    assert auto.calibration_images == 0
    asked = prepare_engine(SPEC, tmp_path / "int8", engine="openvino", precision="int8", calibration_paths=images,
                           holdout_paths=images[:4], threads=1, n_images=len(images))  # fmt: skip
    assert asked.precision == "int8" and "openvino-int8" in asked.cosine_to_fp32


@pytest.mark.parametrize(
    ("engine", "precision", "message"),
    [("torch", "int8", "int8 needs extraction.engine openvino or auto"),
     ("openvino", "fp16", "fp16 runs on CUDA with engine torch, not with engine openvino")],
)  # fmt: skip
def test_precisions_an_engine_cannot_run_are_refused(tmp_path, engine, precision, message):
    config = tiny_config(make_image_folder(tmp_path / "data"))
    config["extraction"].update({"engine": engine, "precision": precision})
    with pytest.raises(ConfigError, match=message):
        validate_config(config, load_schema(REPO / "config" / "schema.yaml"))


def test_large_jpegs_are_draft_decoded_close_to_full_decoding(tmp_path):
    from PIL import Image

    from cbir.extraction.preprocess import preprocessing

    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (30, 40, 3)), np.ones((40, 40, 1))).astype(np.uint8)  # 1200 x 1600
    Image.fromarray(smooth).save(tmp_path / "large.jpg", quality=92)
    Image.fromarray(smooth[:300, :400]).save(tmp_path / "small.jpg", quality=92)
    Image.fromarray(smooth).save(tmp_path / "large.png")
    full = load_rgb_image(tmp_path / "large.jpg")
    drafted = load_rgb_image(tmp_path / "large.jpg", draft_to=224)
    assert full.size == (1600, 1200) and drafted.size == (800, 600)  # 1/2: both sides stay >= 2 x 224
    assert load_rgb_image(tmp_path / "large.jpg", draft_to=100).size == (400, 300)  # 1/4
    assert load_rgb_image(tmp_path / "small.jpg", draft_to=224).size == (400, 300)  # under 2 x 224: in full
    assert load_rgb_image(tmp_path / "large.png", draft_to=224).size == (1600, 1200)  # not a JPEG
    prepared = prepare_network(SPEC, precision="fp32", device="cpu")
    assert prepared.draft_to == 32 and prepared.preprocessing["jpeg_draft"] is True
    transform = preprocessing(BackboneSpec("vgg16", "random", "avg", 224), prepared.network)
    difference = (transform(full) - transform(load_rgb_image(tmp_path / "large.jpg", draft_to=224))).abs()
    assert float(difference.mean()) < 0.02  # normalised units: about 1 grey level in 255
