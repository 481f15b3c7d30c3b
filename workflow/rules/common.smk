import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

# The package holding the logic lives in src/; it is installed in the project's venv, and this
# makes it importable without installation too (rule scripts do the same in _package.py).
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from cbir.config import (  # noqa: E402
    ConfigError,
    dataset_root,
    grid_cells,
    load_schema,
    missing_datasets,
    pca_sizes,
    validate_config,
)

try:
    config.update(validate_config(config, load_schema(Path(workflow.basedir) / "config" / "schema.yaml")))
except ConfigError as error:
    raise WorkflowError(str(error)) from None

_missing = missing_datasets(config)
if _missing:
    raise WorkflowError("missing dataset(s):\n  " + "\n  ".join(_missing))


wildcard_constraints:
    dataset=r"[A-Za-z0-9_]+",
    backbone=r"[A-Za-z0-9_]+",
    split=r"\d{1,2}-\d{1,2}",
    pca=r"\d+|original",
    k=r"\d+",


CONDA_ENV = "../../envs/cbir.yaml"
SEED = config["seed"]

CELL = "results/{dataset}/{backbone}/{split}/{pca}"
LOGS = "results/logs"
BENCHMARKS = "results/benchmarks"


def dataset_source(dataset):
    return config["datasets"][dataset]["source"]


def dataset_folder_input(wildcards):
    """Generated datasets are outputs of a rule; a user's folder is read where it is."""
    if dataset_source(wildcards.dataset) == "sklearn_digits":
        return str(dataset_root(config, wildcards.dataset))
    return []


def pca_basis_size(wildcards):
    """The basis is fitted once at the grid's largest PCA size; smaller sizes are slices of it."""
    return max(pca_sizes(config))


def basis_input(wildcards):
    if wildcards.pca == "original":
        return []
    return "results/{dataset}/{backbone}/{split}/pca_basis.h5".format(**wildcards)


def metrics_files():
    return [
        f"results/{c.dataset}/{c.backbone}/{c.split}/{c.pca}/metrics_k{c.k}.json"
        for c in grid_cells(config)
    ]


def summary_outputs():
    splits = config["grid"]["splits"]
    return (
        ["results/summary/metrics.csv", "results/summary/accuracy_vs_pca.png"]
        + expand("results/summary/accuracy_{split}.{ext}", split=splits, ext=["csv", "md"])
        + expand("results/summary/retrieval_time_{split}.{ext}", split=splits, ext=["csv", "md"])
    )
