# Sharded extraction: plan_shards (a checkpoint) cuts a dataset's manifest into shards of
# extraction.shard_size images, extract_features runs one shard through the backbone (a GPU job
# on a cluster; shards run in parallel and a failed shard reruns alone), gather_features
# concatenates the shards into results/{dataset}/features/{backbone}.h5, which the model
# stages read. Shard files are temporary: they are deleted once gathered.

checkpoint plan_shards:
    """Cut a dataset's manifest into shards of extraction.shard_size images."""
    input:
        manifest=MANIFEST,
    output:
        plan="results/{dataset}/shards/plan.json",
    params:
        shard_size=config["extraction"]["shard_size"],
    log:
        f"{LOGS}/plan_shards/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/plan_shards/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=runtime_from_input(5, 100),
    conda:
        CONDA_ENV
    script:
        "../scripts/plan_shards.py"


rule prepare_engine:
    """The engine extraction runs in: OpenVINO (int8: quantized, calibrated on training images) or torch,
    checked against torch fp32 on held-out training images and, for auto, timed on this machine."""
    input:
        manifest=MANIFEST,
    output:
        engine=directory(ENGINE),
    params:
        backbone=lambda wildcards: config["backbones"][wildcards.backbone],
        extraction=EXTRACTION_OPTIONS,
        # calibration images come from the training set of every split
        splits=config["grid"]["splits"],
        seed=SEED,
    log:
        f"{LOGS}/prepare_engine/{{dataset}}_{{backbone}}.log",
    benchmark:
        f"{BENCHMARKS}/prepare_engine/{{dataset}}_{{backbone}}.tsv"
    threads: config["extraction"]["threads"]
    resources:
        mem_mb=lambda wildcards, attempt: attempt * 8000,
        runtime=60,
    conda:
        CONDA_ENV
    script:
        "../scripts/prepare_engine.py"


rule extract_features:
    """One shard of a dataset's images once through the backbone (CUDA when present)."""
    input:
        manifest=MANIFEST,
        plan="results/{dataset}/shards/plan.json",
        engine=engine_input,
    output:
        shard=temp(SHARD),
    params:
        backbone=lambda wildcards: config["backbones"][wildcards.backbone],
        extraction=EXTRACTION_OPTIONS,
        seed=SEED,
    log:
        f"{LOGS}/extract_features/{{dataset}}_{{backbone}}_{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/extract_features/{{dataset}}_{{backbone}}_{{shard}}.tsv"
    wildcard_constraints:
        shard=r"\d+",
    threads: config["extraction"]["threads"]
    resources:
        gpu=extraction_gpus,
        # the network's threads plus the DataLoader's decoding processes
        cpus_per_task=lambda wildcards, threads: threads + config["extraction"]["num_workers"],
        mem_mb=lambda wildcards, attempt: attempt * (6000 + 1000 * config["extraction"]["num_workers"]),
        runtime=extraction_runtime,
    conda:
        CONDA_ENV
    script:
        "../scripts/extract_features.py"


rule gather_features:
    """The shards, in manifest order, into one HDF5 per dataset and backbone (copied block by block)."""
    input:
        shards=feature_shards,
    output:
        features=FEATURES,
    params:
        # the shards' own settings: the shards are temporary, so a change is seen here and
        # re-extracts them
        backbone=lambda wildcards: config["backbones"][wildcards.backbone],
        extraction=EXTRACTION_OPTIONS,
        seed=SEED,
    log:
        f"{LOGS}/gather_features/{{dataset}}_{{backbone}}.log",
    benchmark:
        f"{BENCHMARKS}/gather_features/{{dataset}}_{{backbone}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        # reading and writing at 50 MB/s or better
        runtime=runtime_from_input(5, 3000),
    conda:
        CONDA_ENV
    script:
        "../scripts/gather_features.py"
