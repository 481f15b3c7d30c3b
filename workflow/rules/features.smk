rule extract_features:
    """Every image once through the backbone (CUDA when present): one HDF5 per dataset and backbone."""
    input:
        manifest="results/{dataset}/manifest.csv",
    output:
        features="results/{dataset}/features/{backbone}.h5",
    params:
        backbone=lambda wildcards: config["backbones"][wildcards.backbone],
        extraction=config["extraction"],
        seed=SEED,
    log:
        f"{LOGS}/extract_features/{{dataset}}_{{backbone}}.log",
    benchmark:
        f"{BENCHMARKS}/extract_features/{{dataset}}_{{backbone}}.tsv"
    threads: config["extraction"]["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        CONDA_ENV
    script:
        "../scripts/extract_features.py"
