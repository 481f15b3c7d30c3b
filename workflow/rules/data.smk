rule prepare_digits:
    """scikit-learn's bundled handwritten digits, written out as an image folder."""
    output:
        folder=directory(os.path.join(config["data_root"], "{dataset}")),
    params:
        image_size=lambda wildcards: config["datasets"][wildcards.dataset].get("image_size", 64),
    log:
        f"{LOGS}/prepare_digits/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/prepare_digits/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        CONDA_ENV
    script:
        "../scripts/prepare_digits.py"


rule manifest:
    """Index the image folder: id, path, label, class, size and checksum of every image."""
    input:
        dataset_folder_input,
    output:
        manifest="results/{dataset}/manifest.csv",
        excluded="results/{dataset}/excluded.csv",
    params:
        root=lambda wildcards: str(dataset_root(config, wildcards.dataset)),
    log:
        f"{LOGS}/manifest/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/manifest/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        CONDA_ENV
    script:
        "../scripts/build_manifest.py"


rule split:
    """Stratified, seeded train/test split, listing image ids."""
    input:
        manifest="results/{dataset}/manifest.csv",
    output:
        split="results/{dataset}/splits/{split}.csv",
    params:
        seed=SEED,
    log:
        f"{LOGS}/split/{{dataset}}_{{split}}.log",
    benchmark:
        f"{BENCHMARKS}/split/{{dataset}}_{{split}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        CONDA_ENV
    script:
        "../scripts/make_split.py"
