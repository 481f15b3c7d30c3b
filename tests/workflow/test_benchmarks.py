"""The benchmark scripts run (small sizes) and print their tables; timings are not asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO


def run(command: list[str], tmp_path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=environment)


def test_gpu_check_falls_back_to_the_cpu(tmp_path):
    result = run(["bash", "benchmarks/gpu_check.sh"], tmp_path, IMAGES="4", ARCH="efficientnet_lite0",
                 CUDA_VISIBLE_DEVICES="")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "running the CPU fallback" in result.stdout
    methods = {"baseline", "engine-fp32", "memory-fp32", "decode", "devengine-fp32", "devdecode"}
    for method in methods:
        assert method in result.stdout, method
    line = json.loads((REPO / "benchmarks/results/extract.jsonl").read_text().splitlines()[-1])
    assert line["machine"]["cores"] >= 1 and "torch" in line["machine"]
    rows = {row["method"]: row for row in line["rows"]}
    assert set(rows) == methods
    assert 0.99 < rows["devengine-fp32"]["cosine_to_pillow"] <= 1.0 + 1e-6  # decoded on the device, nearly Pillow's


def test_search_benchmark_compares_every_mode_with_scikit_learn(tmp_path):
    result = run([sys.executable, "benchmarks/search.py", "--sizes", "400", "--queries", "40", "--single", "10"],
                 tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for mode in ("sklearn brute (baseline)", "clustered", "class", "global", "faiss flat", "faiss ivf"):
        assert mode in result.stdout, mode
    assert "speedup_vs_sklearn" in result.stdout


SCALE_STAGES = ("generate", "pca-incremental", "pca-sample", "project", "kmeans-class", "kmeans-global", "ivf16",
                "ivf", "ivfpq", "query-flat", "query-ivf16", "query-ivf", "query-ivfpq", "evaluate")  # fmt: skip


def test_scale_benchmark_runs_every_stage_and_estimates_ten_million(tmp_path):
    result = run([sys.executable, "benchmarks/scale.py", "--n", "3000", "--dim", "32", "--queries", "50"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout.split("estimates for")[0]
    stages = [line.split()[0] for line in table.splitlines() if line.split() and line.split()[0] in SCALE_STAGES]
    assert stages == list(SCALE_STAGES)
    assert "FAILED" not in table and "est_10m_mb" in table and "fits_10m" in table
    line = json.loads((REPO / "benchmarks/results/scale.jsonl").read_text().splitlines()[-1])
    rows = {row["stage"]: row for row in line["rows"]}
    assert set(rows) == set(SCALE_STAGES) and line["settings"]["n"] == 3000
    assert all(row["wall_s"] >= 0 and row["peak_rss_mb"] > 0 for row in rows.values())
    assert rows["query-ivf"]["recall_at_10"] > 0.5 and rows["query-flat"]["recall_at_10"] == 1.0
    evaluated = rows["evaluate"]  # the bounded evaluation: mAP from the ranks, with its interval
    assert 0 < evaluated["map"] <= 1 and 0 <= evaluated["map_ci95"] < 0.2 and evaluated["queries"] > 0


def test_incremental_benchmark_reruns_only_the_added_images(tmp_path):
    command = [sys.executable, "benchmarks/incremental.py", "--images", "60", "--add", "3", "--classes", "3",
               "--image-size", "32", "--shard-size", "25", "--cores", "1"]  # fmt: skip
    result = run(command, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rerun / scratch wall time" in result.stdout
    line = json.loads((REPO / "benchmarks/results/incremental.jsonl").read_text().splitlines()[-1])
    scratch, rerun = line["rows"]
    assert (scratch["extracted"], rerun["extracted"]) == (60, 3)
    assert scratch["inspected"] == "60 inspected, 0 reused" and rerun["inspected"] == "3 inspected, 60 reused"


def test_job_floor_times_no_op_jobs_through_snakemake_and_bounds_the_default_grid(tmp_path):
    result = run([sys.executable, "benchmarks/job_floor.py", "--cores", "2", "--jobs", "2", "--measured", "300",
                  "--no-record"], tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    header, _, values = result.stdout.splitlines()[1:4]
    row = dict(zip(header.split(), values.split(), strict=True))
    plain, sklearn = float(row["plain_job_s"]), float(row["sklearn_job_s"])
    assert plain > 0 and sklearn > 0
    assert int(row["cells"]) == 36  # config/config.yaml: 4 splits x 9 PCA sizes
    assert float(row["grid_floor_wall_s"]) == pytest.approx(36 * (3 * plain + 4 * sklearn) / 2, rel=0.02)
    assert "before any work" in result.stdout and "of which this floor is" in result.stdout


def test_input_size_benchmark_runs_the_trial_on_seeded_samples_against_torch(tmp_path):
    import pandas as pd

    from helpers import make_image_folder

    folder = make_image_folder(tmp_path / "images", per_class=6)
    paths = sorted(folder.glob("*/*.png"))
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"path": [str(p) for p in paths], "label": [sorted({q.parent.name for q in paths}).index(p.parent.name)
                  for p in paths], "width": 32, "height": 32}).to_csv(manifest, index=False)  # fmt: skip
    result = run([sys.executable, "benchmarks/input_size.py", "--manifest", str(manifest), "--arch", "vgg16",
                  "--weights", "random", "--image-size", "128", "--seeds", "0,1", "--per-class", "4"],
                 tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "map_128px" in result.stdout and "map_96px" in result.stdout and "map_64px" in result.stdout
    line = json.loads((REPO / "benchmarks/results/input_size.jsonl").read_text().splitlines()[-1])
    assert [row["seed"] for row in line["rows"] if not row["runner"].endswith("(baseline)")] == [0, 1]
    assert all(row["chosen_px"] in (128, 96, 64) for row in line["rows"])


def test_neighbours_benchmark_compares_leading_components_with_whole_vectors(tmp_path):
    result = run([sys.executable, "benchmarks/neighbours.py", "--synthetic", "3000,600", "--k", "10", "--probe", "200"],
                 tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "speed_ratio" in result.stdout and "components_recall" in result.stdout
    row = json.loads((REPO / "benchmarks/results/neighbours.jsonl").read_text().splitlines()[-1])["rows"][0]
    assert (row["n"], row["dims"], row["k"]) == (3000, 600, 10)
    # both approximate, both close to the exact neighbours of the sampled rows
    assert row["whole_recall"] >= 0.9 and row["components_recall"] >= 0.9
