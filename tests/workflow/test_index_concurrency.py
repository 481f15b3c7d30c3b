"""Two ``cbir index`` at once in one folder: on the same name the second is refused at once, naming the first, its
PID and how to clear a stale lock; on different names they run side by side, both writing the shared feature cache,
and each ends as it would alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from cbir.io import PARTIAL_MARK, load_features
from cbir.pipeline.lock import read_holder

from helpers import SMALL_BACKBONE, make_image_folder, run_cbir

pytestmark = pytest.mark.workflow
OPTIONS = ["--cores", "1", "--engine", "torch", "--precision", "fp32", "--labels", "none", *SMALL_BACKBONE]


def index(photos: Path, name: str, cwd: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "cbir.cli", "index", str(photos), "--name", name, *OPTIONS]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_second_run_on_one_name_is_refused_and_two_names_run_side_by_side(tmp_path: Path):
    photos = make_image_folder(tmp_path / "photos", per_class=6)
    one, two = index(photos, "one", tmp_path), index(photos, "two", tmp_path)
    lock = tmp_path / "results/one/index.lock"
    try:
        deadline = time.monotonic() + 120
        while (holder := read_holder(lock)) is None or holder.pid != one.pid:
            assert one.poll() is None and time.monotonic() < deadline, one.communicate()[1][-3000:]
            time.sleep(0.05)
        started = time.monotonic()
        again = run_cbir("index", str(photos), "--name", "one", *OPTIONS, cwd=tmp_path)
        assert time.monotonic() - started < 60  # refused at once: it waits for nothing (Python's start-up aside)
        assert again.returncode == 2 and "Traceback" not in again.stderr
        [error] = [line for line in again.stderr.splitlines() if line.startswith("cbir index: error:")]
        assert error.startswith(f"cbir index: error: 'one' is being indexed by another run (PID {one.pid} on ")
        assert f"cbir index {photos} --name one" in error and f"(kill {one.pid})" in error
        assert error.endswith(f"delete {lock}")
        outputs = {name: run.communicate(timeout=900) for name, run in (("one", one), ("two", two))}
    finally:
        for run in (one, two):
            run.kill() if run.poll() is None else None
    for name, run in (("one", one), ("two", two)):
        assert run.returncode == 0, outputs[name][1][-3000:]
        assert f"indexed 18 image(s) in '{photos}' as '{name}'" in outputs[name][0]
    assert lock.read_text() == ""  # released: the run finished

    a, b = (load_features(tmp_path / f"results/{name}/features/efficientnet_lite0.h5") for name in ("one", "two"))
    assert list(a.ids) == list(b.ids) and np.array_equal(a.features, b.features)  # bit for bit, as alone
    packs = [p for p in (tmp_path / "results/cache/features").rglob("*.h5") if not p.name.startswith(".")]
    hashes = set()
    for pack in packs:  # whoever wrote them, every pack is whole
        with h5py.File(pack, "r") as f:
            assert f.attrs["complete"]
            hashes |= {digest.decode() for digest in f["sha256"][()]}
    assert len(hashes) == 18
    assert not [p for p in tmp_path.rglob(f"*{PARTIAL_MARK}*") if ".snakemake" not in p.parts]
