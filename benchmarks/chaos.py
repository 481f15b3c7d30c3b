"""Any kill at any moment loses nothing: SIGKILL at seeded moments over every stage, a resume after each, and
every output compared with an uninterrupted run's.

Two identical folders (``_chaos_scenario``): the reference runs each phase once, whole; the chaos folder runs the
same phases and is killed ``--kills`` times, spread round-robin over the phases' stages, each kill at a moment
drawn from ``--seed`` over the life of a job of its stage (its duration in the reference run) or as a file is being
written, sent to the job alone or to the whole run (``_chaos_kill``). After each kill the run resumes with the
documented command and no clean-up: ``snakemake --unlock`` (only after Snakemake itself was killed) then the same
``snakemake``; the same ``cbir index``; the same ``cbir serve``. The phases:

- ``workflow``: the tiny workflow, ``snakemake --cores 2`` (Snakemake's start-up, then files, features, fitting,
  quality and the summary);
- ``index``, ``update``: ``cbir index`` of a folder of photos, then again after photos were added; meanwhile a
  ``cbir serve`` of the folder's cell answers queries, each of which must be the old cell's answer or the new one's;
- ``serve``: ``cbir serve`` killed while it reloads (after SIGHUP), and started again.

Then every output is compared bit for bit with the reference's, timings aside (``_chaos_compare``): HDF5
datasets and attributes, CSV and JSON files, the feature cache, and the served answers. Reported: kills sent per
stage, resumes, differences, files seen half-written after a kill, temporary files left behind.

    .venv/bin/python benchmarks/chaos.py --kills 200 --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import _common  # noqa: F401  (cbir importable from a checkout)
from _chaos_compare import differences, left_behind, torn_files
from _chaos_kill import STARTUP, KillPlan, start, watch
from _chaos_scenario import Folder, Server, make_sources
from _common import machine, print_table, record

from cbir.hardware import cpu_description

PHASES = {
    "workflow": (STARTUP, "files", "features", "fitting", "quality", "summary"),
    "update": (STARTUP, "files", "features", "fitting", "quality"),
    "serve": ("reload",),
}
EARLIER = 0.6  # the latest moment of a kill, as a share of its job's uninterrupted duration


@dataclass
class Tally:
    kills: list[dict] = field(default_factory=list)
    resumes: int = 0
    failed: list[str] = field(default_factory=list)  # resumes that did not finish the phase
    torn: list[str] = field(default_factory=list)  # files seen half-written right after a kill
    served: list[str] = field(default_factory=list)  # answers that were neither the old cell's nor the new one's
    differences: list[str] = field(default_factory=list)
    left_behind: list[str] = field(default_factory=list)
    takeovers: int = 0  # killed cbir index runs' locks taken over by the resume, with a message
    put_back: int = 0  # resumes that put back files a killed run had left missing


def plan_kills(n: int, rng: random.Random) -> dict[str, list[KillPlan]]:
    """``n`` kills, round-robin over every phase's stages, in the order the stages run."""
    slots = [(phase, stage) for phase, stages in PHASES.items() for stage in stages]
    counts = Counter(slots[i % len(slots)] for i in range(n))
    plans: dict[str, list[KillPlan]] = {phase: [] for phase in PHASES}
    for phase, stage in slots:
        for i in range(counts[(phase, stage)]):
            target = "run" if stage == STARTUP else rng.choice(("job", "run"))
            at_write = stage == "features" and i % 2 == 0  # every other one as a pack of the cache is written
            # over the job's life as it ran uninterrupted; a resumed job may be quicker (warm caches)
            plans[phase].append(KillPlan(phase, stage, target, EARLIER * rng.random(), at_write))
    return plans


def carried(plans: list[KillPlan], phase: str) -> list[KillPlan]:
    """Kills a phase could not send (it finished first) moved to the next one, spread over its stages."""
    stages = PHASES[phase]
    moved = [KillPlan(phase, stages[i % len(stages)], p.target, p.fraction, p.at_write) for i, p in enumerate(plans)]
    return sorted(moved, key=lambda p: stages.index(p.stage))


def run_phase(folder: Folder, phase: str, command: list[str], plans: list[KillPlan], durations: dict[str, float],
              tally: Tally) -> list[KillPlan]:  # fmt: skip
    """Run ``command`` until it finishes, sending ``plans``' kills and resuming after each; returns the kills that
    found no moment (the phase finished first)."""
    queue, order, missed = deque(plans), PHASES[phase], []
    while True:
        process = start(command, folder.root, folder.env, folder.log)
        while True:
            plan = queue[0] if queue else None
            later = frozenset(order[order.index(plan.stage) + 1 :]) if plan else frozenset()
            outcome = watch(process, folder.root, plan, durations, later)
            if not outcome.skipped:
                break
            queue.popleft()  # the run is past that stage: the kill goes to the next one, or to the next phase
            if plan.stage == order[-1]:
                missed.append(plan)
            else:
                queue.appendleft(KillPlan(phase, order[order.index(plan.stage) + 1], plan.target, plan.fraction,
                                          plan.at_write))  # fmt: skip
        if not outcome.killed:
            if outcome.returncode != 0:
                tail = folder.log.read_text(errors="replace")[-1500:]
                tally.failed.append(f"{phase}: exit {outcome.returncode} without a kill:\n{tail}")
            return missed + list(queue)
        queue.popleft()
        tally.kills.append({"phase": phase, "aimed": plan.stage, "stages": outcome.stages, "rules": outcome.rules,
                            "target": outcome.target, "at_write": plan.at_write})  # fmt: skip
        where = f"after kill {len(tally.kills)} ({phase}, {outcome.stages})"
        tally.torn += [f"{where}: {torn}" for torn in torn_files(folder.root)]
        tally.resumes += 1
        if outcome.target == "run" and phase == "workflow":
            folder.unlock()  # the docs: after a SIGKILL, run `snakemake --unlock` once


def measure(folder: Folder, command: list[str], durations: dict[str, float]) -> None:
    """The uninterrupted run of a phase, timing each rule's jobs (the kills' moments are fractions of them)."""
    seen: dict[int, tuple[str, float, float]] = {}
    started = time.monotonic()

    first_job: list[float] = []

    def note(jobs: list) -> None:
        now = time.monotonic()
        for job in jobs:
            rule, first, _ = seen.get(job.pid, (job.rule, now, now))
            seen[job.pid] = (rule, first, now)
        if jobs and not first_job:
            first_job.append(now - started)

    outcome = watch(start(command, folder.root, folder.env, folder.log), folder.root, None, durations, on_jobs=note)
    if outcome.returncode != 0:
        raise RuntimeError(f"the uninterrupted run failed: {folder.log.read_text(errors='replace')[-3000:]}")
    for rule, first, last in [*seen.values(), (STARTUP, 0.0, first_job[0] if first_job else 0.0)]:
        durations[rule] = max(durations.get(rule, 0.0), last - first)


def reload_seconds(server: Server) -> float:
    """How long a SIGHUP reload takes, until the model says it reloaded."""
    before, started = server.model()["reloads"], time.monotonic()
    server.process.send_signal(signal.SIGHUP)
    while (server.model() or {}).get("reloads") == before:
        if time.monotonic() - started > 120:
            raise RuntimeError("cbir serve did not reload on SIGHUP")
        time.sleep(0.05)
    return time.monotonic() - started


class AnswerWatch(threading.Thread):
    """Asks a server the scenario's queries every second while a phase runs; keeps what it answered."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server, self.seen, self.stop = server, [], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.seen.append(self.server.answers())


def reference_update(folder: Folder, durations: dict[str, float]) -> tuple[dict, dict]:
    """The uninterrupted update: the served answers before it and after it (a SIGHUP reload), each rule timed."""
    server = Server(folder)
    server.start()
    try:
        old = server.answers()
        folder.add_photos()
        measure(folder, folder.index(), durations)
        durations["reload"] = reload_seconds(server)
        new = server.answers()
    finally:
        server.stop()
    return old, new


def chaos_update(folder: Folder, plans: dict[str, list[KillPlan]], durations: dict[str, float], old: dict,
                 new: dict, tally: Tally) -> None:  # fmt: skip
    """The update killed and resumed while a server answers; then the server killed while it reloads."""
    server = Server(folder)
    if not started(server, tally, "before the update"):
        return
    try:
        if server.answers() != old:
            tally.served.append("before the update: the answers differ from the uninterrupted run's")
        folder.add_photos()
        answers = AnswerWatch(server)
        answers.start()
        missed = run_phase(folder, "update", folder.index(), plans["update"], durations, tally)
        answers.stop.set()
        answers.join()
        mixed = [f"during the update, answer {i}: {a}" for i, a in enumerate(answers.seen) if a not in (old, new)]
        tally.served += mixed
        deadline = time.monotonic() + 60  # the watcher reloads the settled cell by itself
        while server.answers() != new and time.monotonic() < deadline:
            time.sleep(0.5)
        if server.answers() != new:
            tally.served.append("after the update: the running server did not reload the new cell")
        for plan in plans["serve"] + carried(missed, "serve"):
            server.process.send_signal(signal.SIGHUP)
            time.sleep(plan.fraction * durations["reload"])
            server.stop()  # SIGKILL to the server's group, while it reloads
            tally.kills.append({"phase": "serve", "aimed": "reload", "stages": ["reload"], "rules": ["cbir serve"],
                                "target": "run", "at_write": False})  # fmt: skip
            tally.resumes += 1
            if not started(server, tally, f"after serve kill {len(tally.kills)}"):
                break
            if server.answers() != new:
                tally.served.append(f"after serve kill {len(tally.kills)}: answers differ from the uninterrupted run's")
    finally:
        server.stop()


def chaos(base: Path, kills: int, seed: int) -> Tally:
    """The whole scenario. Each phase runs uninterrupted, its folder is set aside as the reference, the folder is
    put back as it was before the phase, and the phase runs again with kills, in the same place (so that both
    record the same paths). The first ``cbir index`` runs once: both updates start from it."""
    sources = make_sources(base / "sources")
    work, index = Folder(base / "workflow", sources), Folder(base / "index", sources)
    durations: dict[str, float] = {}
    plans, tally = plan_kills(kills, random.Random(seed)), Tally()

    pristine = copied(work.root, base / "workflow-before")
    measure(work, work.snakemake(), durations)
    reference_work = moved(work.root, base / "reference-workflow")
    moved(pristine, work.root)
    missed = run_phase(work, "workflow", work.snakemake(), plans["workflow"], durations, tally)
    plans["update"] = sorted(plans["update"] + carried(missed, "update"), key=lambda p: PHASES["update"].index(p.stage))

    measure(index, index.index(), durations)  # the first index, uninterrupted
    indexed = copied(index.root, base / "index-before")
    old, new = reference_update(index, durations)
    reference_index = moved(index.root, base / "reference-index")
    moved(indexed, index.root)
    chaos_update(index, plans, durations, old, new, tally)

    tally.differences = differences(reference_work, work.root) + differences(reference_index, index.root)
    tally.left_behind = left_behind(work.root) + left_behind(index.root)
    said = index.log.read_text(errors="replace")
    tally.takeovers, tally.put_back = said.count("cbir index: took over the lock"), said.count("cbir index: put back")
    return tally


def copied(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to, symlinks=True, copy_function=shutil.copy2)  # modification times kept
    return to


def moved(folder: Path, to: Path) -> Path:
    folder.rename(to)
    return to


def started(server: Server, tally: Tally, when: str) -> bool:
    try:
        server.start()
    except RuntimeError as error:
        tally.failed.append(f"{when}: {error}")
        return False
    return True


def table(tally: Tally) -> list[dict]:
    """Kills per phase and stage hit (the stages running when the signal went), by target."""
    counts: Counter = Counter()
    for kill in tally.kills:
        for stage in kill["stages"]:
            counts[(kill["phase"], stage, kill["target"])] += 1
    rows: dict[tuple[str, str], dict] = {}
    for (phase, stage, target), n in sorted(counts.items()):
        row = rows.setdefault((phase, stage), {"phase": phase, "stage": stage, "kills": 0, "job": 0, "run": 0})
        row["kills"] += n
        row[target] += n
    return list(rows.values())


def summary(tally: Tally, seconds: float) -> dict:
    return {
        "kills": len(tally.kills),
        "stages_hit": sorted({f"{k['phase']}/{s}" for k in tally.kills for s in k["stages"]}),
        "kills_at_a_write": sum(k["at_write"] for k in tally.kills),
        "resumes": tally.resumes,
        "failed_resumes": tally.failed,
        "differences": tally.differences,
        "served_other_answers": tally.served,
        "half_written_after_a_kill": tally.torn,
        "left_behind": tally.left_behind,
        "lock_takeovers": tally.takeovers,
        "resumes_that_put_files_back": tally.put_back,
        "seconds": round(seconds, 1),
        "kill_list": tally.kills,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="keep both folders here (default: a temporary one)")
    parser.add_argument("--report", type=Path, default=None, help="also write the summary as JSON here")
    args = parser.parse_args(argv)
    base = args.keep or Path(tempfile.mkdtemp(prefix="cbir-chaos-"))
    started = time.monotonic()
    try:
        tally = chaos(base, args.kills, args.seed)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    result = summary(tally, time.monotonic() - started)
    rows = table(tally)
    print(f"chaos: {len(tally.kills)} kills (seed {args.seed}) on {cpu_description()}, {machine()['cores']} cores")
    print_table(rows, ["phase", "stage", "kills", "job", "run"])
    for key in ("resumes", "kills_at_a_write", "lock_takeovers", "resumes_that_put_files_back", "seconds"):
        print(f"{key}: {result[key]}")
    for key in ("failed_resumes", "differences", "served_other_answers", "half_written_after_a_kill", "left_behind"):
        print(f"{key}: {len(result[key])}" + "".join(f"\n  {line}" for line in result[key][:20]))
    record("chaos", rows, settings={"kills": args.kills, "seed": args.seed}, summary=result)
    if args.report:
        args.report.write_text(json.dumps(result, indent=2) + "\n")
    problems = ("failed_resumes", "differences", "served_other_answers", "half_written_after_a_kill", "left_behind")
    return 1 if any(result[key] for key in problems) else 0


if __name__ == "__main__":
    sys.exit(main())
