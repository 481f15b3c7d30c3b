"""What ``cbir index`` shows of a run: one line per stage from Snakemake's job events, the failed job's own error
taken from its log, and everything else captured into the log file."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from cbir.pipeline.progress import Progress, captured_output, error_from_log, failure, read_job_error, stage_of

CBIR_FAILURE = """\
2026-01-02 10:00:00,001 INFO cbir.manifest: rule manifest, wildcards {'dataset': 'trip'}, host vm, SLURM_JOB_ID none
2026-01-02 10:00:00,002 WARNING py.warnings: a warning that is not the error
2026-01-02 10:00:00,003 ERROR cbir.manifest: rule manifest failed
Traceback (most recent call last):
  File "/src/cbir/pipeline/steps.py", line 53, in run_step
    step(smk)
  File "/src/cbir/data/manifest.py", line 137, in check_excluded_fraction
    raise DatasetError(
cbir.data.manifest.DatasetError: 5 of 17 files (29.4%) were excluded, more than data.max_excluded_fraction = 0.2 \
allows. The files and reasons are listed in 'results/logs/manifest/trip.excluded.csv'.
"""

CHAINED_FAILURE = """\
2026-01-02 10:00:00,003 ERROR cbir.fit_spaces: rule fit_spaces failed
Traceback (most recent call last):
  File "/x.py", line 1, in f
KeyError: 'inner'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/scipy/linalg/_decomp.py", line 594, in eigh
    raise LinAlgError('The leading minor of order 1 of B is not positive definite.')
numpy.linalg.LinAlgError: The leading minor of order 1 of B is not positive definite.
"""

MULTILINE_FAILURE = """\
2026-01-02 10:00:00,003 ERROR cbir.split: rule split failed
Traceback (most recent call last):
  File "/x.py", line 1, in f
cbir.pipeline.config.ConfigError: invalid configuration:
  config key 'grid.pca[0]': 'bogus' is not valid
2026-01-02 10:00:01,000 INFO cbir.split: a record after the error
"""


@pytest.mark.parametrize(
    ("log", "error"),
    [
        (CBIR_FAILURE, "5 of 17 files (29.4%) were excluded, more than data.max_excluded_fraction = 0.2 allows. "
                       "The files and reasons are listed in 'results/logs/manifest/trip.excluded.csv'."),
        (CHAINED_FAILURE, "LinAlgError: The leading minor of order 1 of B is not positive definite."),
        (MULTILINE_FAILURE, "invalid configuration:\n  config key 'grid.pca[0]': 'bogus' is not valid"),
        ("2026-01-02 10:00:00,001 INFO cbir.manifest: rule manifest\n", None),
        ("", None),
    ],
    ids=["cbir error: its message", "another error: its type", "a message of several lines", "no error", "empty"],
)  # fmt: skip
def test_the_error_is_the_last_one_its_rule_logged(log: str, error: str | None):
    assert error_from_log(log) == error


def test_the_failed_jobs_error_is_read_from_the_first_log_that_names_one(tmp_path: Path):
    (tmp_path / "results/logs").mkdir(parents=True)
    (tmp_path / "results/logs/quiet.log").write_text("nothing went wrong here\n")
    (tmp_path / "results/logs/job.log").write_text(CHAINED_FAILURE)
    logs = ["results/logs/missing.log", "results/logs/quiet.log", "results/logs/job.log"]
    error, log = read_job_error(logs, tmp_path)
    assert error.startswith("LinAlgError:") and log == tmp_path / "results/logs/job.log"
    assert read_job_error(["results/logs/quiet.log (temp)"], tmp_path) == (None, tmp_path / "results/logs/quiet.log")


def _record(event: str, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("snakemake.logging", logging.INFO, __file__, 0, "", None, None)
    record.__dict__.update(event=event, **fields)
    return record


def _job(progress: Progress, jobid: int, rule: str, **wildcards: str) -> None:
    progress.handle(_record("job_info", jobid=jobid, rule_name=rule, wildcards=wildcards, log=[f"{rule}.log"]))


def test_each_stage_is_one_line_when_its_last_job_finishes():
    screen = io.StringIO()
    progress = Progress(screen, {"files": lambda jobs: f"{len(jobs)} job(s) seen"})
    stats = {"manifest": 1, "split": 1, "plan_shards": 1, "gather_features": 1, "project": 2, "all": 1, "total": 7}
    progress.handle(_record("run_info", stats=stats))
    _job(progress, 1, "manifest", dataset="trip")
    progress.handle(_record("job_finished", job_id=1))
    assert screen.getvalue() == ""  # the split is still to come
    _job(progress, 2, "split", dataset="trip", split="80-20")
    _job(progress, 3, "plan_shards", dataset="trip")
    progress.handle(_record("job_finished", job_id=2))
    assert screen.getvalue() == "  files checked: 2 job(s) seen; 2 steps\n"
    progress.handle(_record("job_finished", job_id=3))
    for jobid in (4, 5):  # shards that the checkpoint added: the stage waits for them and for the gathering
        _job(progress, jobid, "extract_features", dataset="trip", shard=str(jobid))
        progress.handle(_record("job_finished", job_id=jobid))
    assert "features extracted" not in screen.getvalue()
    _job(progress, 6, "gather_features", dataset="trip")
    progress.handle(_record("job_finished", job_id=6))
    assert screen.getvalue().splitlines()[-1] == "  features extracted: 4 steps"
    _job(progress, 7, "project", split="all", pca="100")
    progress.handle(_record("job_error", rule_name="project", jobid=7, log=["project.log"]))
    progress.handle(_record("progress", done=6, total=9))
    assert [job.rule for job in progress.failed] == ["project"] and progress.failed[0].wildcards["split"] == "all"
    assert progress.summary().startswith("6 of 9 steps (66%) done in")
    assert len(screen.getvalue().splitlines()) == 2


def test_stages_a_checkpoint_adds_jobs_to_are_told_at_the_end_of_the_run():
    # choose_pca (grid.measure chosen) adds the chosen cell's MLP and evaluations once it has run: the planned
    # fitting and quality jobs finishing first must not close those stages
    screen = io.StringIO()
    progress = Progress(screen)
    stats = {"project": 1, "select_settings": 1, "choose_pca": 1, "time_extraction": 1, "all_but_summary": 1}
    progress.handle(_record("run_info", stats={**stats, "total": 5}))
    for jobid, rule in enumerate(["time_extraction", "project", "select_settings", "choose_pca"], start=1):
        _job(progress, jobid, rule, split="80-20", pca="100")
        progress.handle(_record("job_finished", job_id=jobid))
        progress.handle(_record("progress", done=jobid, total=5 if jobid < 4 else 7))
    assert screen.getvalue() == ""
    for jobid, rule in [(5, "train_mlp"), (6, "evaluate")]:  # what the checkpoint added
        _job(progress, jobid, rule, split="80-20", pca="100")
        progress.handle(_record("job_finished", job_id=jobid))
        progress.handle(_record("progress", done=jobid, total=7))
    assert screen.getvalue() == ""
    progress.handle(_record("progress", done=7, total=7))
    assert screen.getvalue().splitlines() == ["  models fitted: 4 steps", "  quality measured: 2 steps"]
    # cbir index runs Snakemake twice (the features, then the rest): the summary counts both runs' steps
    progress.next_run()
    progress.handle(_record("progress", done=2, total=3))
    assert progress.summary().startswith("9 of 10 steps (90%) done in")


def test_a_run_with_nothing_to_do_says_so_and_a_terminal_gets_one_line_rewritten():
    assert Progress(io.StringIO()).summary() == "nothing to do: the index is up to date"
    screen = io.StringIO()
    progress = Progress(screen, live=True)
    progress.handle(_record("run_info", stats={"project": 2, "total": 2}))
    _job(progress, 1, "project", split="80-20", pca="100")
    assert screen.getvalue().endswith("\r\033[K  fitting the models: 0 of 2 step(s)")
    progress.handle(_record("job_finished", job_id=1))
    _job(progress, 2, "project", split="all", pca="100")
    progress.handle(_record("job_finished", job_id=2))
    assert screen.getvalue().endswith("\r\033[K  models fitted: 2 steps\n")
    assert stage_of("all") is None and stage_of("a_plugin_rule").key == "quality"


def test_a_failure_is_told_by_the_failed_steps_own_error_else_by_snakemakes(tmp_path: Path):
    from snakemake_interface_common.exceptions import WorkflowError

    (tmp_path / "manifest.log").write_text(CBIR_FAILURE)
    progress = Progress(io.StringIO())
    _job(progress, 1, "manifest", dataset="trip")
    progress.handle(_record("job_error", rule_name="manifest", jobid=1, log=["manifest.log"]))
    message, log = failure(WorkflowError("At least one job did not complete successfully."), progress, tmp_path)
    assert message.startswith("checking the files failed (rule manifest): 5 of 17 files (29.4%) were excluded")
    assert log == tmp_path / "manifest.log"
    config_error = WorkflowError("invalid configuration:\n  config key 'grid.pca[0]': 'bogus' is not valid")
    assert failure(config_error, Progress(io.StringIO()), tmp_path) == (str(config_error), None)
    assert failure(RuntimeError("boom"), Progress(io.StringIO()), tmp_path) == ("RuntimeError: boom", None)
    killed = Progress(io.StringIO())
    _job(killed, 1, "extract_features", dataset="trip", backbone="lite", shard="00000")
    killed.handle(_record("job_error", rule_name="extract_features", jobid=1, log=["extract.log"]))
    message, _ = failure(WorkflowError("At least one job did not complete successfully."), killed, tmp_path)
    assert message == ("extracting features failed (rule extract_features, backbone lite, shard 00000): the step "
                       "stopped without an error of its own (killed, or out of memory?)")  # fmt: skip


def test_the_jobs_output_goes_to_the_log_file_and_the_screen_stays_clear(tmp_path: Path, capfd):
    log = tmp_path / "results/trip/index.log"
    script = "import sys; print('a job on stdout'); print('a job on stderr', file=sys.stderr)"
    with captured_output(log) as output:
        subprocess.run([sys.executable, "-c", script], check=True)
        output.log.write("snakemake's own log\n")
        output.terminal.write("  files checked\n")
    screen = capfd.readouterr()
    assert "  files checked" in screen.err and "a job" not in screen.out + screen.err
    assert log.read_text().splitlines() == ["a job on stdout", "a job on stderr", "snakemake's own log"]
    with captured_output(log, echo=True):
        subprocess.run([sys.executable, "-c", script], check=True)
    assert "a job on stderr" in capfd.readouterr().err and "a job on stdout" in log.read_text()
