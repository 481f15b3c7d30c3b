"""Interrupted feature extraction loses nothing: killed mid-run (SIGTERM, then SIGKILL) and rerun.

One tiny dataset in three extraction shards. The first run is stopped with SIGTERM while a
shard's pack of the feature cache is being written, after another one finished; the rerun is
stopped with SIGKILL (no cleanup possible) while a third shard is being written; a last run
finishes. Finished shards are never extracted again, no partial file is ever taken for a pack,
and the gathered features equal an uninterrupted extraction of the same images.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cbir.data.manifest import read_manifest
from cbir.extraction.features import extract_to_hdf5
from cbir.extraction.registry import BackboneSpec
from cbir.io import atomic_path, load_features

from helpers import REPO, make_image_folder, tiny_config, write_config

FEATURES = "results/tiny/features/lite.h5"
SHARDS = Path("results/tiny/shards/lite")
CACHE = Path("results/cache/features")
SHARD_LOGS = Path("results/logs/extract_features")
N_SHARDS = 3
SHARD_SIZE = 20
BATCH_SIZE = 4  # divides the shard size: a shard's batches are those of a single extraction

# A plugin (imported by every job, see docs "Plugin API") that makes each image read take 50 ms,
# so that a shard is written for about a second. Without it a 64-px shard takes tens of
# milliseconds on a fast CPU, and a shard seen half-written could finish before the signal landed.
SLOW_READS = """
import time
from cbir.extraction.features import ImageFiles

_read = ImageFiles.__getitem__

def _slow_read(self, index):
    time.sleep(0.05)
    return _read(self, index)

ImageFiles.__getitem__ = _slow_read
"""


def snakemake_command(root: Path, config: Path, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(root),
        "--configfile", str(config),
        "--cores", "1",  # one shard at a time, so that one is finished while the next is written
        *args,
    ]  # fmt: skip


def finished_shards(root: Path) -> set[str]:
    """The shards whose receipt is written: their pack is complete in the feature cache."""
    folder = root / SHARDS
    return {p.stem for p in folder.glob("0*.json")} if folder.is_dir() else set()


def partial_packs(root: Path) -> list[Path]:
    """Packs of the feature cache being written (or left by a killed job)."""
    return list((root / CACHE).glob("*/.*.partial-*"))


def run_until_a_shard_is_written(root: Path, config: Path, n_finished: int, sig: signal.Signals) -> str:
    """Run the extraction; once ``n_finished`` shards are done and another is being written, send
    ``sig`` to the whole process group (Snakemake and its job). Returns Snakemake's output."""
    out = root / f"interrupted_{sig.name}.log"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with open(out, "w") as sink:
        process = subprocess.Popen(
            snakemake_command(root, config, FEATURES), stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True, env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while not (len(finished_shards(root)) >= n_finished and partial_packs(root)):
            assert process.poll() is None, f"the run ended before it could be interrupted:\n{out.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no shard was being written within 300 s"
            time.sleep(0.005)
        os.killpg(process.pid, sig)
        process.wait(timeout=120)
    _wait_for_group_to_end(process.pid)
    assert process.returncode != 0
    return out.read_text()


def _wait_for_group_to_end(pgid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process group {pgid} still runs {timeout} s after the signal")


def run(root: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(snakemake_command(root, config, *args), capture_output=True, text=True, timeout=600, env=env)


def extracted_shards(output: str) -> set[str]:
    """The shards whose extraction job a Snakemake run started (from its job listing)."""
    return set(re.findall(r"wildcards: dataset=tiny, backbone=lite, shard=(\d+)", output))


def log_mtimes(root: Path) -> dict[str, int]:
    return {p.stem.rsplit("_", 1)[1]: p.stat().st_mtime_ns for p in (root / SHARD_LOGS).glob("tiny_lite_*.log")}


def uninterrupted_features(root: Path) -> np.ndarray:
    """The same images through the same backbone and settings in one go, in this process."""
    manifest = read_manifest(root / "results/tiny/manifest.csv")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the extraction jobs (extraction.threads: 1)
    try:
        path = extract_to_hdf5(
            manifest["path"].tolist(), manifest["id"].tolist(), manifest["label"].tolist(),
            BackboneSpec("efficientnet_lite0", "pypi", "avg", 64), root / "reference.h5",
            batch_size=BATCH_SIZE, num_workers=0, device="auto", precision="fp32", progress=False,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return load_features(path).features


WRITER = """
import os, signal, sys, time
from cbir.io import atomic_path, terminate_cleanly
with terminate_cleanly(), atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half of it")
    os.kill(os.getpid(), getattr(signal, sys.argv[2]))
    time.sleep(30)
"""


@pytest.mark.parametrize(("sig", "leftover"), [("SIGTERM", False), ("SIGKILL", True)])
def test_a_killed_write_leaves_nothing_under_the_final_name(tmp_path: Path, sig: str, leftover: bool):
    """SIGTERM unwinds and removes the temporary file; SIGKILL cannot, and the next write removes it."""
    target = tmp_path / "shard.h5"
    result = subprocess.run([sys.executable, "-c", WRITER, str(target), sig], capture_output=True, timeout=60)
    assert result.returncode != 0
    assert not target.exists()
    assert bool(list(tmp_path.glob(".shard.h5.partial-*"))) == leftover
    if sig == "SIGTERM":
        assert b"Terminated: terminated by signal 15" in result.stderr
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"all of it")
    assert target.read_bytes() == b"all of it" and not list(tmp_path.glob(".shard.h5.partial-*"))


RULE_STEP = """
import os, signal, sys, time
from types import SimpleNamespace
from cbir.io import atomic_path
from cbir.pipeline.steps import run_step

def step(smk):
    with atomic_path(sys.argv[1]) as tmp:
        tmp.write_bytes(b"half of it")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)

smk = SimpleNamespace(log=[], rule="fit_pca", wildcards={"split": "80-20"}, threads=1)
run_step(smk, step)
"""


def test_every_rule_step_cleans_up_when_terminated(tmp_path: Path):
    """run_step wraps every rule script: SIGTERM unwinds it and its temporary file goes."""
    target = tmp_path / "pca_basis.h5"
    result = subprocess.run([sys.executable, "-c", RULE_STEP, str(target)], capture_output=True, timeout=60)
    assert result.returncode != 0 and b"Terminated: terminated by signal 15" in result.stderr
    assert not target.exists() and not list(tmp_path.glob(".pca_basis.h5.partial-*"))


@pytest.mark.workflow
def test_killed_extraction_resumes_without_recomputing_finished_shards(tmp_path: Path):
    data = make_image_folder(tmp_path / "data" / "tiny", per_class=N_SHARDS * SHARD_SIZE // 3)
    config = tiny_config(data)
    config["extraction"] = {**config["extraction"], "shard_size": SHARD_SIZE, "batch_size": BATCH_SIZE}
    (tmp_path / "slow_reads.py").write_text(SLOW_READS)
    config["plugins"] = [str(tmp_path / "slow_reads.py")]
    config_path = write_config(tmp_path / "config.yaml", config)

    # 1. SIGTERM while a shard is written: the job unwinds, its partial file is removed. (On some
    # machines the shard being written when the signal is sent still finishes: one or two are done.)
    run_until_a_shard_is_written(tmp_path, config_path, 1, signal.SIGTERM)
    done_first = finished_shards(tmp_path)
    assert 1 <= len(done_first) < N_SHARDS and not partial_packs(tmp_path)
    mtimes = log_mtimes(tmp_path)

    # 2. rerun, SIGKILL while the last shard is written (after the others finished): nothing can clean up
    output = run_until_a_shard_is_written(tmp_path, config_path, N_SHARDS - 1, signal.SIGKILL)
    assert not extracted_shards(output) & done_first  # the finished shards were not extracted again
    done_second = finished_shards(tmp_path)
    assert done_first <= done_second and len(done_second) == N_SHARDS - 1
    [killed] = extracted_shards(output) - done_second  # started, and killed while its pack was written
    assert len(partial_packs(tmp_path)) == 1  # SIGKILL: nothing could remove it
    for shard in done_first:
        assert log_mtimes(tmp_path)[shard] == mtimes[shard], f"shard {shard} was extracted again"
    mtimes = log_mtimes(tmp_path)
    unlock = run(tmp_path, config_path, "--unlock")  # a killed Snakemake leaves its lock behind
    assert unlock.returncode == 0, unlock.stderr[-2000:]

    # 3. the last run extracts only the killed shard, removes its leftover and gathers all
    final = run(tmp_path, config_path, FEATURES)
    assert final.returncode == 0, final.stderr[-3000:]
    assert extracted_shards(final.stdout + final.stderr) == {killed}
    for shard in done_second:
        assert log_mtimes(tmp_path)[shard] == mtimes[shard], f"shard {shard} was extracted again"
    assert not list((tmp_path / "results").rglob(".*.partial-*"))

    features = load_features(tmp_path / FEATURES)
    assert features.attrs["n_shards"] == N_SHARDS and features.attrs["complete"]
    reference = uninterrupted_features(tmp_path)
    assert features.features.shape == reference.shape == (N_SHARDS * SHARD_SIZE, 1280)
    assert np.array_equal(features.features, reference)
