"""Any kill at any moment loses nothing, bounded for the suite: ``benchmarks/chaos.py`` with 20 SIGKILLs spread over
every stage of the tiny workflow, a ``cbir index`` update and ``cbir serve``'s reload, each followed by the
documented resume and no clean-up; every output equals the uninterrupted run's, bit for bit in fp32 (README,
"Interrupted runs"). The 200-kill run is the benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

pytestmark = pytest.mark.workflow
PROBLEMS = ("failed_resumes", "differences", "served_other_answers", "half_written_after_a_kill", "left_behind")


def test_twenty_kills_over_every_stage_lose_nothing(tmp_path: Path):
    report = tmp_path / "chaos.json"
    command = [sys.executable, "benchmarks/chaos.py", "--kills", "20", "--seed", "0", "--report", str(report),
               "--keep", str(tmp_path / "runs")]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert report.is_file(), result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(report.read_text())
    for problem in PROBLEMS:
        assert summary[problem] == [], (problem, summary[problem][:5])
    assert result.returncode == 0, result.stderr[-3000:]
    kills = summary["kill_list"]
    assert summary["kills"] == len(kills) >= 20 and summary["resumes"] == len(kills)
    hit = {stage for kill in kills for stage in kill["stages"]}
    assert {"snakemake", "files", "features", "fitting", "quality", "reload"} <= hit, summary["stages_hit"]
    assert {kill["phase"] for kill in kills} == {"workflow", "update", "serve"}
    assert {kill["target"] for kill in kills} == {"job", "run"} and summary["kills_at_a_write"] >= 1
    assert summary["lock_takeovers"] >= 1  # a killed cbir index's lock, taken over by the resume with a message
