# Helpers of the sharded extraction and of the rules' resources: memory (mem_mb) and wall time
# (runtime, minutes) grow with what a job reads. Snakemake evaluates them again right before it
# runs or submits a job, when its input exists; `attempt` (1, 2, ... with --retries) scales
# memory for a retried job.

from cbir.pipeline.resources import (  # noqa: E402
    extraction_runtime_min,
    feature_file_shape,
    file_mb,
    fit_pca_mem_mb,
    has_nvidia_driver,
    train_fraction,
)
from cbir.extraction.feature_cache import feature_settings  # noqa: E402
from cbir.extraction.shards import read_shard_plan  # noqa: E402
from cbir.layout import ENGINE, SHARD, SHARD_PLAN  # noqa: E402

# The extraction settings that change the features (part of the network's fingerprint): changing
# one plans the extraction again under another fingerprint. Speed settings (batch size, workers,
# threads) and the shard layout's sizing are read from the config by the scripts and rerun nothing.
EXTRACTION_OPTIONS = feature_settings(config["extraction"])


def engine_input(wildcards):
    """The prepared engine of a dataset and backbone, unless extraction.engine is torch (nothing to prepare)."""
    if config["extraction"]["engine"] == "torch":
        return []
    return ENGINE.format(dataset=wildcards.dataset, backbone=wildcards.backbone)


def shard_plans():
    """Every dataset's shard plan, named among the run's targets: a features file whose plan is missing (a killed
    plan_shards job leaves none) would otherwise never be gathered again, whatever changed, as Snakemake does not
    look at the inputs of a job that waits on a checkpoint whose output is missing."""
    return [SHARD_PLAN.format(dataset=dataset, backbone=network) for dataset, network in networks()]


def feature_shards(wildcards):
    """The shard files of a dataset and backbone, known once the checkpoint has planned them."""
    plan = read_shard_plan(checkpoints.plan_shards.get(dataset=wildcards.dataset, backbone=wildcards.backbone).output.plan)
    return expand(SHARD, dataset=wildcards.dataset, backbone=wildcards.backbone, shard=plan.names)


def extraction_gpus(wildcards):
    """One GPU per shard job when extraction runs on CUDA, so `--resources gpu=1` serialises them.

    With device auto, a GPU is counted when this machine has an NVIDIA driver; a cluster profile
    sets it for the compute nodes (profiles/slurm: set-resources extract_features gpu: 1).
    """
    device = config["extraction"]["device"]
    if device == "auto":
        return int(has_nvidia_driver())
    return int(device == "cuda")


def extraction_runtime(wildcards):
    options = config["extraction"]
    return extraction_runtime_min(options["shard_size"], options["seconds_per_image"])


def fit_pca_mem(wildcards, input, attempt):
    shape = feature_file_shape(input.features)
    if shape is None:  # a dry run, before the features exist
        return 2000
    n_train = int(shape[0] * train_fraction(wildcards.split))
    return attempt * fit_pca_mem_mb(n_train, shape[1], pca_basis_size(wildcards), config["pca_fit"])


def mem_from_input(base_mb, per_input_mb):
    """base_mb + per_input_mb x (size of the job's input in MB), times the attempt."""
    return lambda wildcards, input, attempt: attempt * int(base_mb + per_input_mb * file_mb(input))


def runtime_from_input(base_min, input_mb_per_min):
    """base_min + the minutes to read the job's input at input_mb_per_min."""
    return lambda wildcards, input: base_min + int(file_mb(input) / input_mb_per_min)
