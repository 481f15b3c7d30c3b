"""Extraction engines: OpenVINO fp32/int8 prepared once, checked against torch fp32, followed by queries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import make_image_folder, tiny_config

pytest.importorskip("openvino", reason="OpenVINO is not installed")


def test_the_workflow_extracts_and_times_with_the_prepared_engine(tmp_path: Path):
    from helpers import run_snakemake, write_config

    config = tiny_config(make_image_folder(tmp_path / "data" / "tiny", per_class=10))
    config["backbones"] = {"lite": {"arch": "vgg16", "weights": "random", "pooling": "avg", "image_size": 32}}
    config["grid"]["pca"] = ["original"]
    config["extraction"].update({"engine": "openvino", "precision": "fp32"})
    result = run_snakemake(tmp_path, write_config(tmp_path / "config.yaml", config))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    import h5py

    with h5py.File(tmp_path / "results/tiny/features/lite.h5") as f:
        assert f.attrs["engine"] == "openvino" and f.attrs["engine_model"] == "results/tiny/engine/lite/model.xml"
    timing = json.loads((tmp_path / "results/tiny/features/lite.timing.json").read_text())
    assert timing["seed"] == 0
    assert "on cpu, openvino fp32" in (tmp_path / "results/logs/extract_features/tiny_lite_00000.log").read_text()
