"""The workflow on a real SLURM cluster through Snakemake's SLURM executor plugin.

Needs a cluster that runs jobs and keeps accounting (sacct): `scripts/slurm-local.sh start`
installs and starts a one-node one on Debian/Ubuntu as root, and CI (`.ci/run`) does so before
the tests. Without sbatch/sacct, or without a controller that answers, the tests are skipped
with the reason; with CBIR_REQUIRE_SLURM=1 (set by CI) they fail instead.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cbir.io import load_arrays

from helpers import REPO, make_image_folder, session_config, write_config

pytestmark = pytest.mark.slurm
PROFILE = REPO / "profiles" / "slurm-local"
PARTITION = "local"  # profiles/slurm-local and scripts/slurm-local.sh
CELL = Path("results/tiny/lite/80-20")
JOB_ID = re.compile(r"SLURM_JOB_ID (\S+)")


@functools.cache
def _cluster_problem() -> str | None:
    """Why the workflow cannot run on SLURM here, or None when it can (asked once per session)."""
    missing = [tool for tool in ("sbatch", "sacct", "sinfo", "squeue") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found: no SLURM client here (scripts/slurm-local.sh start installs one)"
    checks = {
        "the controller (sinfo)": ["sinfo", "-h", "-p", PARTITION, "-o", "%P %a"],
        "accounting (sacct)": ["sacct", "-n", "-X", "-S", "now-1minutes"],
    }
    for what, command in checks.items():
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:
            return f"{what} does not answer within 20 s (scripts/slurm-local.sh start runs a cluster)"
        if result.returncode != 0:
            return f"{what} fails: {result.stderr.strip()[:300]} (scripts/slurm-local.sh start runs a cluster)"
        if what.startswith("the controller") and "up" not in result.stdout:
            return f"no partition '{PARTITION}' that is up (scripts/slurm-local.sh start creates it)"
    return None


@pytest.fixture(scope="session")  # session, like finished_run, so it is asked first and skips first
def slurm_cluster() -> None:
    problem = _cluster_problem()
    if problem is None:
        return
    if os.environ.get("CBIR_REQUIRE_SLURM") == "1":
        pytest.fail(f"SLURM is required (CBIR_REQUIRE_SLURM=1) but unusable: {problem}")
    pytest.skip(f"no usable SLURM cluster: {problem}")


def run_on_slurm(workdir: Path, config_path: Path, *args: str, limit: int = 900) -> subprocess.CompletedProcess:
    """snakemake through the SLURM profile, bounded by `timeout -k`: it ignores SIGTERM while jobs run."""
    command = [
        "timeout", "-k", "30", str(limit),
        sys.executable, "-m", "snakemake",
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(config_path),
        "--workflow-profile", str(PROFILE),
        "--cores", "2",
        *args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(command, capture_output=True, text=True, timeout=limit + 60, env=env)


def job_ids_in_logs(root: Path) -> dict[str, str]:
    """{log file: the SLURM job id its rule recorded}, for every rule log of the run."""
    ids = {}
    for log in sorted((root / "results/logs").rglob("*.log")):
        match = JOB_ID.search(log.read_text())
        ids[str(log.relative_to(root / "results/logs"))] = match.group(1) if match else "missing"
    return ids


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    result = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(line.split("|", 1) for line in result.stdout.split())


def _assert_finished_in_time(result: subprocess.CompletedProcess) -> None:
    assert result.returncode not in (124, 137), "snakemake hung and was killed by timeout:\n" + result.stderr[-3000:]


def test_workflow_runs_as_slurm_jobs_and_matches_the_local_run(slurm_cluster, finished_run, tmp_path: Path):
    local, _ = finished_run
    data = make_image_folder(tmp_path / "data" / "tiny", per_class=10)  # the same images
    config = session_config(data)  # the same settings as the local run
    # two shards, extracted as two SLURM jobs; shard size = batch size, so the batches (and
    # therefore the features) are those of the local single-shard run
    config["extraction"] = {**config["extraction"], "shard_size": 16}
    # two of the local run's three cells (the basis is fitted at the same largest size, 8)
    config["grid"] = {**config["grid"], "pca": [8, "original"]}
    result = run_on_slurm(tmp_path, write_config(tmp_path / "config.yaml", config))
    _assert_finished_in_time(result)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "executor slurm" in result.stderr.lower() or "SLURM run ID" in result.stderr

    # every rule ran inside a SLURM job, and accounting lists each job as COMPLETED
    ids = job_ids_in_logs(tmp_path)
    assert {"manifest/tiny.log", "plan_shards/tiny_lite.log", "fit_pca/tiny_lite_80-20.log"} <= set(ids)
    shards = [name for name in ids if name.startswith("extract_features/")]
    assert shards == ["extract_features/tiny_lite_00000.log", "extract_features/tiny_lite_00001.log"]
    not_slurm = {name: job for name, job in ids.items() if not job.isdigit()}
    assert not not_slurm, f"rules that did not run under SLURM: {not_slurm}"
    assert len(set(ids.values())) == len(ids)  # one job per rule run
    states = sacct_states(sorted(set(ids.values())))
    assert states == dict.fromkeys(ids.values(), "COMPLETED")

    # the same outputs as the local run
    features, _ = load_arrays(tmp_path / "results/tiny/features/lite.h5")
    expected, _ = load_arrays(local / "results/tiny/features/lite.h5")
    assert list(features["ids"]) == list(expected["ids"])
    assert np.allclose(features["features"], expected["features"], atol=1e-5)
    fitted = ["pca_basis.h5"] + [f"{pca}/{name}" for pca in ("8", "original")
                                 for name in ("gallery.h5", "classifier.h5", "clusters_k2.h5")]  # fmt: skip
    for name in fitted:
        ours, _ = load_arrays(tmp_path / CELL / name)
        theirs, _ = load_arrays(local / CELL / name)
        assert ours.keys() == theirs.keys(), name
        for key in ours.keys() - {"paths"}:  # image paths differ: another folder
            if ours[key].dtype.kind in "fc":
                assert np.allclose(ours[key], theirs[key], atol=1e-4), (name, key)
            else:
                assert np.array_equal(ours[key], theirs[key]), (name, key)
    for pca in ("8", "original"):
        ours = json.loads((tmp_path / CELL / pca / "metrics_k2.json").read_text())
        theirs = json.loads((local / CELL / pca / "metrics_k2.json").read_text())
        assert ours["accuracy"] == theirs["accuracy"]
        assert ours["precision_at_5_clustered"] == theirs["precision_at_5_clustered"]


def test_a_failing_rule_ends_the_run_with_an_error(slurm_cluster, finished_run, tmp_path: Path):
    """fit_pca fails under SLURM (a PCA size above its sample of training images): the run stops, it does not hang.

    (A PCA size above the whole training set is refused before any job: that cannot fail a job.)
    """
    local, config = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(local, copy, symlinks=True)  # features, splits and their metadata: only fit_pca runs
    config = {**config, "grid": {**config["grid"], "pca": [4, 8]},
              "pca_fit": {"exact_max_images": 1, "large_method": "sample", "sample_size": 2}}  # fmt: skip
    result = run_on_slurm(copy, write_config(copy / "failing.yaml", config), str(CELL / "pca_basis.h5"), limit=300)
    _assert_finished_in_time(result)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Error in rule fit_pca" in output
    log = (copy / "results/logs/fit_pca/tiny_lite_80-20.log").read_text()
    assert "PCA size 8 exceeds the PCA sample of 2 images" in log
    job = JOB_ID.search(log).group(1)
    assert job.isdigit()
    assert sacct_states([job]) == {job: "FAILED"}
    assert not (copy / CELL / "pca_basis.h5").exists()
