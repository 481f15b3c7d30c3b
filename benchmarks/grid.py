"""Wall time of the default grid: from scratch, a no-op rerun, and a rerun after adding a PCA size.

Runs `snakemake --cores N` on config/config.yaml in a fresh working folder (nothing is written in
the checkout). Targets: the no-op rerun under 5 s; the added PCA size rebuilds one branch only.
``--engines torch,auto`` instead runs the default grid from scratch once per extraction engine, each
in its own folder, back to back, and prints each run's ratio to the first.

    python benchmarks/grid.py --cores 2
    python benchmarks/grid.py --cores 2 --engines torch,auto
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


def compare_engines(engines: list[str], cores: int) -> None:
    """The default grid from scratch with each extraction engine; the precision stays the config's."""
    from _common import cpu_model

    rows = []
    for engine in engines:
        workdir = Path(tempfile.mkdtemp(prefix=f"cbir-grid-{engine}-"))
        overlay = workdir / "engine.yaml"
        overlay.write_text(yaml.safe_dump({"extraction": {"engine": engine}}))
        seconds, log = snakemake(workdir, cores, "--configfile", str(overlay))
        rows.append({"engine": engine, "seconds": seconds, "jobs": jobs_run(log), "chosen": _chosen(workdir)})
    for row in rows:
        row["ratio_vs_first"] = rows[0]["seconds"] / row["seconds"]
    print(f"default grid (config/config.yaml) from scratch per extraction engine, --cores {cores}, {cpu_model()}")
    print_table(rows, ["engine", "seconds", "jobs", "chosen", "ratio_vs_first"])
    record("grid_engines", rows, settings={"cores": cores, "engines": engines})


def _chosen(workdir: Path) -> str:
    """What extracted the features: the engine and precision the feature file recorded."""
    import h5py

    from cbir.io import read_attrs

    with h5py.File(next((workdir / "results/digits/features").glob("*.h5"))) as f:
        attrs = read_attrs(f)
    return f"{attrs.get('engine', 'torch')} {attrs.get('precision')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", help="working folder to use and keep (default: a temporary one)")
    parser.add_argument("--engines", default="", help="from-scratch runs per extraction.engine, e.g. torch,auto")
    args = parser.parse_args()
    if args.engines:
        compare_engines([e for e in args.engines.split(",") if e], args.cores)
        return
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
