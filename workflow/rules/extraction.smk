# Sharded extraction through the content-addressed feature cache (cbir.extraction.feature_cache): plan_shards
# (a checkpoint) lists the images of a dataset whose content (SHA-256) the cache of the network's
# fingerprint lacks and cuts them into shards of extraction.shard_size images; extract_features
# runs one shard through the backbone into a pack of the cache (a GPU job on a cluster; shards run
# in parallel and a failed shard reruns alone); gather_features assembles
# results/{dataset}/features/{backbone}.h5 from the cache in manifest order, which the model
# stages read. A rerun after adding, changing or renaming images extracts only the new contents.
# The shards' receipts are temporary: they are deleted once gathered.

checkpoint plan_shards:
    """The images whose features the cache lacks, cut into shards of extraction.shard_size images."""
    input:
        manifest=MANIFEST,
        engine=engine_input,
        finetuned=finetuned_input,
    output:
        plan=SHARD_PLAN,
    params:
        shard_size=config["extraction"]["shard_size"],
        cache=config["extraction"]["cache"],
        # what the network's fingerprint is made of: changing any of them plans again
        backbone=network_entry,
        extraction=EXTRACTION_OPTIONS,
        seed=SEED,
    log:
        f"{LOGS}/plan_shards/{{dataset}}_{{backbone}}.log",
    benchmark:
        f"{BENCHMARKS}/plan_shards/{{dataset}}_{{backbone}}.tsv"
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
    checked against torch fp32 on held-out training images and, for auto, timed on this machine; for many small
    images, first the input size, chosen by validation on training images."""
    input:
        # prepared once: images added later do not re-calibrate it (which would change every
        # image's features and so miss the whole feature cache)
        manifest=ancient(MANIFEST),
        finetuned=finetuned_input,
    output:
        engine=directory(ENGINE),
    params:
        backbone=network_entry,
        extraction=EXTRACTION_OPTIONS,
        input_size=config["extraction"]["input_size"],
        # calibration images (and those the input size is chosen on) come from the training set of every split
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
    """One shard of a dataset's images once through the backbone (CUDA when present), into the feature cache."""
    input:
        manifest=MANIFEST,
        plan=SHARD_PLAN,
        engine=engine_input,
        finetuned=finetuned_input,
    output:
        receipt=temp(SHARD),
    params:
        backbone=network_entry,
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
    """The dataset's feature file, in manifest order, from the feature cache (copied block by block)."""
    input:
        manifest=MANIFEST,
        plan=SHARD_PLAN,
        receipts=feature_shards,
    output:
        features=FEATURES,
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


rule changed_copies:
    """Changed copies (cropped, mirrored, brighter or darker, re-encoded) of a sample of a collection's photos
    through its own network: how validation judges a collection without labels."""
    input:
        features=backbone_features,
    output:
        copies=COPIES,
    params:
        n_copies=config["validation"]["copies"],
        device=config["extraction"]["device"],
        seed=SEED,
    log:
        f"{LOGS}/changed_copies/{{dataset}}_{{backbone}}.log",
    benchmark:
        f"{BENCHMARKS}/changed_copies/{{dataset}}_{{backbone}}.tsv"
    threads: config["extraction"]["threads"]
    resources:
        gpu=extraction_gpus,
        mem_mb=6000,
        runtime=30,
    conda:
        CONDA_ENV
    script:
        "../scripts/changed_copies.py"

