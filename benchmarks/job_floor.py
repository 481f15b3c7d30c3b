"""The default run's floor: what its per-cell jobs cost before they do any work, measured through Snakemake.

A throwaway workflow runs ``--jobs`` thin jobs of each kind with ``--cores N``: a rule script that imports what
the workflow's rule scripts import (cbir's I/O and step glue: numpy, h5py, pandas for the CSVs) and does
nothing; and the same importing scikit-learn, as the four per-cell rules that fit a model do (cluster,
train_mlp, select_settings, fit_spaces). Each job's seconds come from its Snakemake benchmark file, as the
real run's do. The grid of config/config.yaml (cells x the seven per-cell rules) then cannot take less than

    cells x (3 x plain job + 4 x scikit-learn job) / cores

of wall time, however fast the work itself: printed beside a measured default run (``--measured``, the wall
seconds of ``snakemake --cores N``, e.g. from benchmarks/grid.py) as the share of that run the floor is.

    python benchmarks/job_floor.py --cores 2 --jobs 24 --measured 300
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import yaml
from _common import REPO, cpu_model, print_table, record

from cbir.pipeline.grid import grid_cells

PER_CELL_RULES = 7  # project, cluster, train_mlp, select_settings, fit_spaces, evaluate, evaluate_spaces
SKLEARN_RULES = 4  # cluster, train_mlp, select_settings, fit_spaces

SCRIPT = """\
from cbir.data.manifest import read_manifest  # noqa: F401  (what a rule script imports: pandas, h5py, numpy)
from cbir.io import load_arrays  # noqa: F401
from cbir.pipeline.steps import run_step


def main(smk) -> None:
    if smk.params.sklearn:  # as k-means, the MLP and LDA import it
        import sklearn.cluster  # noqa: F401
    open(smk.output[0], "w").close()


run_step(snakemake, main)  # noqa: F821  (Snakemake's script preamble defines it)
"""

SNAKEFILE = """\
rule all:
    input:
        expand("done/{{kind}}_{{i}}", kind=["plain", "sklearn"], i=range({jobs})),

rule noop:
    output:
        "done/{{kind}}_{{i}}",
    params:
        sklearn=lambda wildcards: wildcards.kind == "sklearn",
    log:
        "logs/{{kind}}_{{i}}.log",
    benchmark:
        "benchmarks/{{kind}}/{{i}}.tsv"
    threads: 1
    script:
        "{script}"
"""


def run_floor(cores: int, jobs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="cbir-floor-") as folder:
        work = Path(folder)
        script = work / "noop.py"
        script.write_text(SCRIPT)
        (work / "Snakefile").write_text(textwrap.dedent(SNAKEFILE.format(jobs=jobs, script=script)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
        command = [sys.executable, "-m", "snakemake", "--snakefile", str(work / "Snakefile"), "--directory",
                   str(work), "--cores", str(cores), "--quiet", "all"]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"the no-op workflow failed:\n{done.stderr[-3000:]}")
        seconds = {}
        for kind in ("plain", "sklearn"):
            values = [float(path.read_text().splitlines()[1].split("\t")[0])
                      for path in (work / "benchmarks" / kind).glob("*.tsv")]  # fmt: skip
            seconds[kind] = statistics.median(values)
        return {"wall_s": wall, "plain_job_s": seconds["plain"], "sklearn_job_s": seconds["sklearn"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=24, help="no-op jobs of each kind")
    parser.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml")
    parser.add_argument("--measured", type=float, help="wall seconds of the default run on this machine")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results/job_floor.jsonl")
    args = parser.parse_args()

    floor = run_floor(args.cores, args.jobs)
    cells = len(grid_cells(yaml.safe_load(args.config.read_text())))  # the workflow's own grid expansion
    per_cell = (PER_CELL_RULES - SKLEARN_RULES) * floor["plain_job_s"] + SKLEARN_RULES * floor["sklearn_job_s"]
    floor_wall = cells * per_cell / args.cores
    row = {**floor, "cells": cells, "per_cell_job_s": per_cell, "grid_floor_wall_s": floor_wall}
    if args.measured:
        row["measured_wall_s"] = args.measured
        row["floor_share"] = floor_wall / args.measured
    print(f"{cpu_model()}, {args.cores} cores; {args.jobs} no-op jobs of each kind")
    print_table([row], list(row))
    print(f"a job that imports cbir's I/O: {floor['plain_job_s']:.2f} s; importing scikit-learn too: "
          f"{floor['sklearn_job_s']:.2f} s; {cells} cells x {PER_CELL_RULES} rules ({SKLEARN_RULES} with scikit-learn):"
          f" at least {floor_wall:.0f} s on {args.cores} cores before any work")  # fmt: skip
    if args.measured:
        print(f"the measured run: {args.measured:.0f} s, of which this floor is {row['floor_share']:.0%}")
    if not args.no_record:
        record("job_floor", [row], cores=args.cores, jobs=args.jobs)


if __name__ == "__main__":
    main()
