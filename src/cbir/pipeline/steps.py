"""Glue for the workflow's rule scripts: logging to the rule's log file and thread limits."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from threadpoolctl import threadpool_limits

from cbir.io import DiskFullError, terminate_cleanly
from cbir.plugins import load_plugins


def configure_logging(log_path: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logging.captureWarnings(True)
    # faiss's loader reports each CPU-specific library it tries and lacks at INFO, as if an error
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def run_step(smk: Any, step: Callable[[Any], None]) -> None:
    """Run a rule's step with its log file and its thread budget; log any error before failing.

    SIGTERM (Snakemake stopping, a scheduler cancelling the job) unwinds the step, so the files it
    was writing under temporary names are removed rather than left behind. A full disk is one line naming the file
    and the space it needs (:class:`cbir.io.DiskFullError`), without a traceback.
    """
    configure_logging(smk.log[0] if smk.log else None)
    log = logging.getLogger(f"cbir.{smk.rule}")
    # where the job ran: on a cluster, the scheduler's job id (SLURM sets SLURM_JOB_ID)
    log.info(
        "rule %s, wildcards %s, host %s, SLURM_JOB_ID %s",
        smk.rule,
        dict(smk.wildcards.items()),
        socket.gethostname(),
        os.environ.get("SLURM_JOB_ID", "none"),
    )
    try:
        # the backbones and sources that the config's plugins register (docs, "Plugin API")
        load_plugins(getattr(smk, "config", {}).get("plugins", []))
        # an OpenMP runtime loaded later (faiss's, on first use) reads its thread count from here; one that
        # outnumbers the job's cores spins against the other jobs (an IVF index trained 200x slower)
        os.environ["OMP_NUM_THREADS"] = str(smk.threads)
        with terminate_cleanly(), threadpool_limits(limits=smk.threads):
            step(smk)
    except DiskFullError as error:  # the user's to fix, and the message says how: one line, no traceback
        log.error("rule %s failed: %s", smk.rule, error)
        raise SystemExit(1) from None
    except Exception:
        log.exception("rule %s failed", smk.rule)
        raise
