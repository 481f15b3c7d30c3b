"""Wall time of the default grid: from scratch, a no-op rerun, and a rerun after adding a PCA size.

Runs `snakemake --cores N` on config/config.yaml in a fresh working folder (nothing is written in
the checkout). Targets: the no-op rerun under 5 s; the added PCA size rebuilds one branch only.

    python benchmarks/grid.py --cores 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _common import REPO, print_table, record


def snakemake(workdir: Path, cores: int, *extra: str) -> tuple[float, str]:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--cores", str(cores), *extra]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"snakemake failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def jobs_run(log: str) -> int:
    return sum(1 for line in log.splitlines() if line.startswith("Finished jobid"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", help="working folder to use and keep (default: a temporary one)")
    args = parser.parse_args()
    workdir = Path(args.keep or tempfile.mkdtemp(prefix="cbir-grid-"))
    rows = []
    seconds, log = snakemake(workdir, args.cores)
    rows.append({"run": "from scratch", "seconds": seconds, "jobs": jobs_run(log)})
    seconds, log = snakemake(workdir, args.cores)
    rows.append({"run": "no-op rerun", "seconds": seconds, "jobs": jobs_run(log)})
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["grid"]["pca"] = [*sorted(p for p in config["grid"]["pca"] if p != "original"), 60, "original"]
    extra = workdir / "one_more_pca.yaml"
    extra.write_text(yaml.safe_dump(config))
    seconds, log = snakemake(workdir, args.cores, "--configfile", str(extra))
    rows.append({"run": "rerun after adding PCA 60", "seconds": seconds, "jobs": jobs_run(log)})
    print(f"default grid (config/config.yaml), --cores {args.cores}, in {workdir}")
    print_table(rows, ["run", "seconds", "jobs"])
    record("grid", rows, settings=vars(args))


if __name__ == "__main__":
    main()
