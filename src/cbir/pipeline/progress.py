"""What ``cbir index`` shows of a workflow run: one line per stage, the full log in a file, the failed job's error.

Snakemake's own log (its config notices, job-stats table and job records) and everything the rule
scripts print go to a log file (:func:`captured_output`, at the level of the process's file
descriptors, so the jobs' processes are captured too); :class:`Progress`, a handler of Snakemake's
logger, turns its job events into one line per stage (:data:`STAGES`) on the terminal. When a job
fails, :func:`error_from_log` takes the error its rule script logged (``cbir.pipeline.steps.run_step``
logs the exception into the rule's log file) as the one line to show.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

# Snakemake's job events (snakemake_interface_logger_plugins.common.LogEvent, a str enum): compared by value,
# so that this module needs no Snakemake import
RUN_INFO, JOB_INFO, JOB_FINISHED, JOB_ERROR, PROGRESS = "run_info", "job_info", "job_finished", "job_error", "progress"


@dataclass(frozen=True)
class Stage:
    """A group of the workflow's rules shown as one line: what it is doing, and what it has done."""

    key: str
    doing: str
    done: str
    rules: frozenset[str]


STAGES = (
    Stage("files", "checking the files", "files checked",
          frozenset({"download_dataset", "prepare_digits", "cifar10_images", "fashion_mnist_images", "scan_files",
                     "manifest", "duplicates", "split"})),
    Stage("features", "extracting features", "features extracted",
          frozenset({"prepare_engine", "plan_shards", "extract_features", "gather_features"})),
    Stage("fitting", "fitting the models", "models fitted",
          frozenset({"fit_pca", "project", "cluster", "train_mlp", "fit_spaces", "select_settings", "choose_pca"})),
    Stage("quality", "measuring quality", "quality measured",
          frozenset({"time_extraction", "evaluate", "evaluate_spaces", "summarize", "montage"})),
)  # fmt: skip
TARGET_RULES = frozenset({"all", "all_but_summary"})  # the run's targets: no work of their own
# a checkpoint whose outcome adds jobs to stages that are in the run's plan without them: with it in the plan,
# those stages' lines wait for the end of the run (the extraction's shards are waited for by the gathering instead)
CHECKPOINT_STAGES = {"choose_pca": ("fitting", "quality")}


def stage_of(rule: str) -> Stage | None:
    """The stage a rule's jobs count in (an unknown rule: the last stage; the target rule: none)."""
    if rule in TARGET_RULES:
        return None
    return next((stage for stage in STAGES if rule in stage.rules), STAGES[-1])


@dataclass
class Job:
    rule: str
    wildcards: dict[str, str]
    logs: list[str]


@dataclass
class StageCount:
    expected: Counter[str] = field(default_factory=Counter)  # jobs per rule: the run's plan, and jobs added since
    started: Counter[str] = field(default_factory=Counter)
    finished: list[Job] = field(default_factory=list)
    shown: bool = False

    @property
    def total(self) -> int:
        return sum(self.expected.values())


Details = Mapping[str, Callable[[list[Job]], str]]


class Progress(logging.Handler):
    """Snakemake's job events as one line per stage on ``stream`` (a line rewritten in place on a terminal).

    A stage's line is written when its last job finishes; ``details`` may add what it did (from the
    finished jobs, or the files they wrote). Jobs that a checkpoint adds (the extraction's shards)
    join their stage's count when they start. Failed jobs are kept in :attr:`failed`.
    """

    def __init__(self, stream: TextIO, details: Details | None = None, live: bool | None = None) -> None:
        super().__init__(logging.INFO)
        self.stream = stream
        self.details = dict(details or {})
        self.live = stream.isatty() if live is None else live
        self.stages = {stage.key: StageCount() for stage in STAGES}
        self.jobs: dict[int, Job] = {}
        self.failed: list[Job] = []
        self.steps = (0, 0)  # Snakemake's count: steps done, of all
        self.earlier_steps = (0, 0)  # the same, of the earlier Snakemake runs of this one (next_run)
        self.planned = False  # a run with jobs to do (Snakemake reported its plan)
        self.deferred: set[str] = set()  # stages told only at the end of the run (CHECKPOINT_STAGES)
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        event = str(getattr(record, "event", "") or "")
        try:
            with self._lock:
                self._handle(event, record.__dict__)
        except Exception:  # the display must never stop the run
            self.handleError(record)

    def _handle(self, event: str, fields: Mapping[str, Any]) -> None:
        if event == RUN_INFO:
            self.planned = True
            for rule, count in dict(fields.get("stats") or {}).items():
                stage = stage_of(rule) if rule != "total" else None
                if stage is not None:
                    self.stages[stage.key].expected[rule] = int(count)
                self.deferred.update(CHECKPOINT_STAGES.get(rule, ()))
        elif event == JOB_INFO:
            job = Job(str(fields.get("rule_name")), dict(fields.get("wildcards") or {}), list(fields.get("log") or []))
            self.jobs[int(fields["jobid"])] = job
            stage = stage_of(job.rule)
            if stage is not None:
                count = self.stages[stage.key]
                count.started[job.rule] += 1
                count.expected[job.rule] = max(count.expected[job.rule], count.started[job.rule])
                self._show_live(stage)
        elif event == JOB_FINISHED:
            job = self.jobs.get(int(fields["job_id"]))
            stage = stage_of(job.rule) if job else None
            if job is not None and stage is not None:
                count = self.stages[stage.key]
                count.finished.append(job)
                if len(count.finished) >= count.total and not count.shown and stage.key not in self.deferred:
                    count.shown = True
                    self._write(self._line(stage, done=True), final=True)
                else:
                    self._show_live(stage)
        elif event == JOB_ERROR:
            job = Job(str(fields.get("rule_name")), {}, list(fields.get("log") or []))
            known = self.jobs.get(int(fields.get("jobid", -1)))
            self.failed.append(known if known is not None else job)
        elif event == PROGRESS:
            self.steps = (int(fields.get("done", 0)), int(fields.get("total", 0)))
            if self.steps[1] and self.steps[0] >= self.steps[1]:  # the run is done: the stages left, in order
                for stage in STAGES:
                    count = self.stages[stage.key]
                    if count.finished and not count.shown:
                        count.shown = True
                        self._write(self._line(stage, done=True), final=True)

    def _line(self, stage: Stage, done: bool) -> str:
        count = self.stages[stage.key]
        if not done:
            return f"  {stage.doing}: {len(count.finished)} of {count.total} step(s)"
        detail = self.details.get(stage.key)
        text = detail(count.finished) if detail else ""
        steps = f"{count.total} step{'s' if count.total != 1 else ''}"
        return f"  {stage.done}: {text}; {steps}" if text else f"  {stage.done}: {steps}"

    def _show_live(self, stage: Stage) -> None:
        if self.live:
            self._write(self._line(stage, done=False), final=False)

    def _write(self, line: str, final: bool) -> None:
        if final:
            self.stream.write(("\r\033[K" if self.live else "") + line + "\n")
        elif self.live:
            self.stream.write("\r\033[K" + line)
        self.stream.flush()

    def next_run(self) -> None:
        """Another Snakemake run of the same index follows: its steps add to the ones counted so far."""
        self.earlier_steps = (self.earlier_steps[0] + self.steps[0], self.earlier_steps[1] + self.steps[1])
        self.steps = (0, 0)

    def summary(self) -> str:
        """The run in one line: Snakemake's steps done and the time taken (or that there was nothing to do)."""
        if not self.planned:
            return "nothing to do: the index is up to date"
        done, total = (self.earlier_steps[0] + self.steps[0], self.earlier_steps[1] + self.steps[1])
        percent = f"{100 * done // total}%" if total else "100%"
        return f"{done} of {total} steps ({percent}) done in {time.monotonic() - self.started:.0f} s"

    def close_line(self) -> None:
        """End a live line left open (a run stopped in the middle of a stage)."""
        if self.live:
            self.stream.write("\r\033[K")
            self.stream.flush()


# --- the jobs' and Snakemake's output, into a file --------------------------------------------


@dataclass
class Captured:
    """Inside :func:`captured_output`: ``terminal``, the screen's stderr; ``log``, a stream into the log file."""

    terminal: TextIO
    log: TextIO


@contextlib.contextmanager
def captured_output(log_path: str | Path, echo: bool = False) -> Iterator[Captured]:
    """Everything written to this process's stdout and stderr (file descriptors 1 and 2, which the jobs'
    processes inherit) goes to ``log_path``, and to the terminal as well with ``echo``.

    A thread copies a pipe into the file; it ends once the last writer has closed the pipe.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    read_end, write_end = os.pipe()
    log_file = open(log_path, "wb")  # noqa: SIM115  (closed by the pump once the pipe is drained)
    screen = os.fdopen(os.dup(saved[2]), "wb", buffering=0) if echo else None  # the pump's own: it outlives saved

    def pump() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe, log_file:
            while chunk := pipe.read(1 << 16):
                log_file.write(chunk)
                log_file.flush()
                if screen is not None:
                    screen.write(chunk)
        if screen is not None:
            screen.close()

    thread = threading.Thread(target=pump, name="cbir-index-log", daemon=True)
    thread.start()
    for fd in (1, 2):
        os.dup2(write_end, fd)
    log_stream = os.fdopen(write_end, "w", buffering=1)
    terminal = os.fdopen(os.dup(saved[2]), "w", buffering=1)
    try:
        yield Captured(terminal, log_stream)
    finally:
        for stream in (sys.stdout, sys.stderr, log_stream):
            stream.flush()
        for fd in (1, 2):
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
        log_stream.close()
        thread.join(timeout=30)  # a job's process that outlives the run would hold the pipe open
        terminal.close()


# --- the failed job's error, from its log -----------------------------------------------------

RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")  # a record of the rule's log (steps.configure_logging)
FAILED = re.compile(r"^\S+ \S+ ERROR cbir\.\S+: rule \S+ failed$")  # run_step's record of the error
STOPPED = re.compile(r"^\S+ \S+ ERROR cbir\.\S+: rule \S+ failed: (?P<message>.+)$")  # one told in a line (disk full)
TRACEBACK = "Traceback (most recent call last):"
EXCEPTION = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?:: (?P<message>.*))?$")


def error_from_log(text: str) -> str | None:
    """The error a rule's log ends with: the exception of the traceback that ``run_step`` logged (else the log's
    last traceback), as its message alone for cbir's own errors (``cbir.*``, worded for the user) and as
    ``Type: message`` for any other; None when the log holds no traceback. An error ``run_step`` told in one
    line (a full disk) is that line's message."""
    lines = text.splitlines()
    stopped = [match["message"] for line in lines if (match := STOPPED.match(line))]
    if stopped:
        return stopped[-1]
    failed = [i for i, line in enumerate(lines) if FAILED.match(line)]
    starts = [i for i, line in enumerate(lines) if line.startswith(TRACEBACK) and (not failed or i > failed[-1])]
    if not starts:
        return None
    block = lines[starts[-1] + 1 :]
    block = block[: next((i for i, line in enumerate(block) if RECORD.match(line)), len(block))]
    first = next((i for i, line in enumerate(block) if line and not line[0].isspace()), None)
    if first is None:
        return None
    match = EXCEPTION.match(block[first])
    if match is None:
        return "\n".join(block[first:]).strip() or None
    message = "\n".join([match["message"] or "", *block[first + 1 :]]).strip()
    kind = match["type"]
    if kind.startswith("cbir.") and message:
        return message
    name = kind.rsplit(".", 1)[-1]
    return f"{name}: {message}" if message else name


def read_job_error(logs: Sequence[str | Path], root: Path) -> tuple[str | None, Path | None]:
    """The error of a failed job's first log that names one, and that log (``root``: where the run's
    relative paths start); (None, its first log) when none does."""
    paths = [root / str(log).split(" ")[0] for log in logs]  # Snakemake may annotate a file: "name (temp)"
    for path in paths:
        try:
            error = error_from_log(path.read_text(errors="replace"))
        except OSError:
            continue
        if error:
            return error, path
    return None, (paths[0] if paths else None)


def failure(error: Exception, progress: Progress, root: Path) -> tuple[str, Path | None]:
    """What stopped a run, in one message, and the failed job's log: the failed step's own error (read from its
    log, ``root``: where the run's relative paths start), else the error Snakemake raised (the config's
    checks: ``common.smk`` raises them as a ``WorkflowError``)."""
    if progress.failed:
        job = progress.failed[0]
        cause, job_log = read_job_error(job.logs, root)
        stage = stage_of(job.rule)
        where = ", ".join([f"rule {job.rule}", *(f"{k} {v}" for k, v in job.wildcards.items() if k != "dataset")])
        message = f"{stage.doing if stage else 'the run'} failed ({where}): " + (
            cause or "the step stopped without an error of its own (killed, or out of memory?)"
        )
        if len(progress.failed) > 1:
            message += f" ({len(progress.failed) - 1} more step(s) failed)"
        return message, job_log
    if type(error).__module__.split(".")[0] in ("snakemake", "snakemake_interface_common", "cbir"):
        return str(error).strip() or type(error).__name__, None
    return f"{type(error).__name__}: {error}", None


def quietly(detail: Callable[[list[Job]], str]) -> Callable[[list[Job]], str]:
    """A stage's detail, or nothing where its files cannot be read: the display never stops the run."""

    def read(jobs: list[Job]) -> str:
        try:
            return detail(jobs)
        except (OSError, ValueError, KeyError):
            return ""

    return read


def shown(path: str | Path) -> str:
    """A path as the user best reads it: relative to the current folder when inside it."""
    relative = os.path.relpath(Path(path).resolve(), Path.cwd())
    return str(path) if relative.startswith("..") else relative
