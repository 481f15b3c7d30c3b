"""The chaos harness's hand: runs a command in its own process group, finds its workflow jobs, and kills at a moment.

A workflow job is a rule script Snakemake runs as ``python <workdir>/.snakemake/scripts/tmpXXXX.<rule>.py``;
its rule names its stage (:func:`stage_of`). A kill waits for a job of the stage it aims at, then for a moment
drawn from the seed over that job's life (its duration in the uninterrupted run), or, aimed at a write, for a
temporary file to appear; then SIGKILL goes to that job alone (as the out-of-memory killer would) or to the whole
run, Snakemake or ``cbir index`` and its jobs at once (as a power cut would).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cbir.io import PARTIAL_MARK
from cbir.pipeline.progress import stage_of

POLL_S = 0.01
OnJobs = Callable[[list["Job"]], None]
SKIP_AFTER_S = 0.5  # a stage with no job running this long, while later stages run, is over
STARTUP = "snakemake"  # the stage before any job: Snakemake parsing, planning, recording


WORKFLOW = Path(__file__).resolve().parents[1] / "workflow"


def rules_of_scripts(workflow: Path = WORKFLOW) -> dict[str, str]:
    """Rule script -> rule (``build_manifest`` -> ``manifest``), read from the rule files: a job's process names
    its script, not its rule."""
    rules: dict[str, str] = {}
    rule = None
    for path in sorted((workflow / "rules").glob("*.smk")):
        for line in path.read_text().splitlines():
            match = re.match(r"^(?:rule|checkpoint) (\w+):", line)
            rule = match[1] if match else rule
            script = re.search(r"scripts/(\w+)\.py", line)
            if script and rule:
                rules.setdefault(script[1], rule)
    return rules


RULE_OF_SCRIPT = rules_of_scripts()


def stage_of_rule(rule: str) -> str:
    """files, features, fitting, quality, or summary (the summary rule alone)."""
    if rule == "summarize":
        return "summary"
    stage = stage_of(rule)
    return stage.key if stage else STARTUP


@dataclass(frozen=True)
class Job:
    pid: int
    rule: str

    @property
    def stage(self) -> str:
        return stage_of_rule(self.rule)


def running_jobs(workdir: Path) -> list[Job]:
    """The workflow jobs of ``workdir`` running now (their rule scripts' processes)."""
    marker = f"{workdir.resolve()}/.snakemake/scripts/tmp"
    jobs = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        script = next((a for a in args if a.startswith(marker) and a.endswith(".py")), None)
        if script and "python" in Path(args[0]).name:
            name = script.rsplit(".", 2)[-2]
            jobs.append(Job(int(entry.name), RULE_OF_SCRIPT.get(name, name)))
    return jobs


@dataclass
class KillPlan:
    """One kill: the stage aimed at, what gets the signal (``job`` or ``run``), and how the moment is chosen:
    ``fraction`` of the job's life, or, with ``at_write``, as a temporary file appears."""

    phase: str
    stage: str
    target: str
    fraction: float
    at_write: bool = False


@dataclass
class KillOutcome:
    """How a watch ended: ``killed``, ``skipped`` (the run went past the stage aimed at: it has no job of it left),
    or neither (the run ended by itself, with ``returncode``)."""

    killed: bool = False
    skipped: bool = False
    stages: list[str] = field(default_factory=list)  # the stages running when the signal went
    rules: list[str] = field(default_factory=list)
    target: str = ""
    returncode: int | None = None


def start(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """The command in a new process group (the group id is its pid), its output appended to ``log``."""
    with open(log, "ab") as sink:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )


def partial_files(workdir: Path) -> bool:
    return any(PARTIAL_MARK in p.name for p in (workdir / "results").rglob("*"))


def wait_for_group(pgid: int, timeout: float = 120) -> None:
    """Until no process of the group is left (a killed job's Snakemake ends once its other jobs have)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.killpg(pgid, signal.SIGKILL)


def watch(process: subprocess.Popen, workdir: Path, plan: KillPlan | None, durations: dict[str, float],
          later: frozenset[str] = frozenset(), on_jobs: OnJobs | None = None) -> KillOutcome:  # fmt: skip
    """Follow a run until it ends, until ``plan``'s kill is sent (then until its process group is gone), or until
    the run is past the stage aimed at: jobs of the ``later`` stages run and none of it has for ``SKIP_AFTER_S``.

    ``durations``: seconds each rule took in the uninterrupted run (the moment of a kill is a fraction of it);
    ``on_jobs``: called with the running jobs at every poll (the uninterrupted run measures with it)."""
    started = last_aimed = time.monotonic()
    first_seen: dict[int, float] = {}
    while process.poll() is None:
        jobs = running_jobs(workdir)
        now = time.monotonic()
        for job in jobs:
            first_seen.setdefault(job.pid, now)
        if on_jobs:
            on_jobs(jobs)
        if plan is not None:
            if any(job.stage == plan.stage for job in jobs):
                last_aimed = now
            elif any(job.stage in later for job in jobs) and now - last_aimed > SKIP_AFTER_S:
                return KillOutcome(skipped=True)
            victim = _due(plan, jobs, first_seen, now - started, durations, workdir)
            if victim is not None:
                outcome = _kill(process, plan, victim, jobs)
                if outcome is not None:
                    return outcome
        time.sleep(POLL_S)
    return KillOutcome(returncode=process.returncode)


def _due(plan: KillPlan, jobs: list[Job], first_seen: dict[int, float], elapsed: float,
         durations: dict[str, float], workdir: Path) -> Job | bool | None:  # fmt: skip
    """The job to kill now (True: the run, no job aimed at), or None: not yet."""
    if plan.stage == STARTUP:
        return True if elapsed >= plan.fraction * durations.get(STARTUP, 2.0) else None
    aimed = [job for job in jobs if job.stage == plan.stage]
    if not aimed:
        return None
    if plan.at_write:
        return aimed[0] if partial_files(workdir) else None
    now = time.monotonic()
    for job in aimed:
        if now - first_seen[job.pid] >= plan.fraction * durations.get(job.rule, 1.0):
            return job
    return None


def _kill(process: subprocess.Popen, plan: KillPlan, victim: Job | bool, jobs: list[Job]) -> KillOutcome | None:
    """SIGKILL to the job or the run; None where the job ended by itself meanwhile (the next one is aimed at)."""
    if plan.target == "job" and isinstance(victim, Job):
        try:
            os.kill(victim.pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
        stages, rules, target = [victim.stage], [victim.rule], "job"
    else:
        os.killpg(process.pid, signal.SIGKILL)
        stages = sorted({job.stage for job in jobs}) or [STARTUP]
        rules, target = sorted({job.rule for job in jobs}), "run"
    process.wait()
    wait_for_group(process.pid)
    return KillOutcome(True, False, stages, rules, target, process.returncode)
