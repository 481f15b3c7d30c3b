from cbir.data.sources import data_dir, fashion_mnist_paths, prepared_datasets_pattern  # noqa: E402
from cbir.layout import IGNORED  # noqa: E402


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


rule download_dataset:
    """Download a dataset's archive from its url, check size and SHA-256, unpack it safely (once)."""
    output:
        record=DOWNLOAD_RECORD,
    params:
        name=lambda wildcards: wildcards.dataset,
        entry=adapter_options,
        root=lambda wildcards: str(dataset_root(config, wildcards.dataset)),
        downloads=str(downloads_dir(config)),
    log:
        f"{LOGS}/download_dataset/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/download_dataset/{{dataset}}.tsv"
    localrule: True
    threads: 1
    resources:
        mem_mb=1000,
        runtime=240,
    conda:
        CONDA_ENV
    script:
        "../scripts/download_dataset.py"


rule cifar10_images:
    """CIFAR-10's pickled batches (restricted unpickler) written out as PNGs, one folder per class."""
    input:
        download_input,
    output:
        folder=directory(PREPARED_IMAGES),
    wildcard_constraints:
        # rules writing results/<dataset>/images match only the datasets of their own source
        dataset=prepared_datasets_pattern(config["datasets"], "cifar10_images"),
    params:
        entry=adapter_options,
        root=lambda wildcards: str(dataset_root(config, wildcards.dataset)),
    log:
        f"{LOGS}/cifar10_images/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/cifar10_images/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        CONDA_ENV
    script:
        "../scripts/export_cifar10.py"


rule fashion_mnist_images:
    """Fashion-MNIST's gzipped IDX files (strict reader) written out as PNGs, one folder per class,
    optionally a seeded, class-balanced subset (max_per_class); the official split is kept."""
    input:
        # the four IDX files: replacing one exports the images again
        lambda wildcards: [
            str(path)
            for path in fashion_mnist_paths(
                data_dir(dataset_root(config, wildcards.dataset), dataset_entry(wildcards.dataset))
            )
        ],
    output:
        folder=directory(PREPARED_IMAGES),
    wildcard_constraints:
        dataset=prepared_datasets_pattern(config["datasets"], "fashion_mnist_images"),
    params:
        entry=adapter_options,
        root=lambda wildcards: str(dataset_root(config, wildcards.dataset)),
        # the subset drawn under max_per_class follows the seed; without a cap it plays no part
        seed=lambda wildcards: SEED if dataset_entry(wildcards.dataset).get("max_per_class") else None,
    log:
        f"{LOGS}/fashion_mnist_images/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/fashion_mnist_images/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        CONDA_ENV
    script:
        "../scripts/export_fashion_mnist.py"


rule scan_files:
    """Inspect (decode, measure, hash) one shard of a large folder dataset's files for its manifest.

    A folder of more than data.scan_shard_size files is listed when the workflow starts and
    inspected by this many scan jobs, each taking a contiguous slice of the sorted listing; the
    manifest job then takes every file's inspection from their records. Unchanged files are taken
    from the file record cache (results/<dataset>/cache/file_records.csv), so after a change every
    shard runs again but inspects only the new or changed files. The records are temporary.
    """
    output:
        records=temp(SCAN_RECORDS),
    wildcard_constraints:
        shard=r"\d+",
        n=r"\d+",
    params:
        folder=lambda wildcards: str(dataset_user_folder(wildcards.dataset)),
        file_records=lambda wildcards: FILE_RECORDS.format(dataset=wildcards.dataset),
        files=dataset_files_state,
        # what is no photo is not inspected (cbir.data.ignore); the same patterns as the manifest's
        ignore=config["data"]["ignore"],
    log:
        f"{LOGS}/scan_files/{{dataset}}_{{shard}}-of-{{n}}.log",
    benchmark:
        f"{BENCHMARKS}/scan_files/{{dataset}}_{{shard}}-of-{{n}}.tsv"
    threads: config["data"]["scan_threads"]
    resources:
        mem_mb=2000,
        runtime=120,
    conda:
        CONDA_ENV
    script:
        "../scripts/scan_files.py"


rule manifest:
    """Index the dataset through its adapter: id, path, label, class, size and checksum of every image.

    Files that claim to be images (an image extension) and cannot be used go to excluded.csv with
    the reason; above data.max_excluded_fraction of them, or with fewer than two classes, or with a
    path outside the dataset folder, the job stops. What is no photo (videos, sidecars, OS files,
    hidden and thumbnail folders, other files, data.ignore's patterns: cbir.data.ignore) is
    ignored, counted per folder and kind in ignored.csv, and never stops the run.
    The files are inspected (decoded, measured, hashed) by data.scan_threads processes (or before,
    by the scan_files jobs of a large folder dataset), except those unchanged since the last run:
    same path, size and mtime in the file record cache results/<dataset>/cache/file_records.csv
    (no output: Snakemake would delete it before the job). A file edited in place that keeps both
    its size and mtime is not noticed (the rule rsync and git use); deleting the cache forces a
    full rescan and otherwise only costs time.
    """
    input:
        source=manifest_input,
        scans=scan_records,
    output:
        manifest=MANIFEST,
        excluded=EXCLUDED,
        ignored=IGNORED,
    params:
        source=lambda wildcards: dataset_source(wildcards.dataset),
        entry=adapter_options,
        root=lambda wildcards: str(dataset_root(config, wildcards.dataset)),
        images=lambda wildcards: PREPARED_IMAGES.format(dataset=wildcards.dataset),
        # where the excluded files are listed when there are too many: the job's outputs are removed
        rejected=lambda wildcards: f"{LOGS}/manifest/{wildcards.dataset}.excluded.csv",
        file_records=lambda wildcards: FILE_RECORDS.format(dataset=wildcards.dataset),
        # names, sizes and mtimes of the dataset's files (folder datasets): a change rebuilds the manifest
        files=dataset_files_state,
        # data.ignore: the patterns of files and folders to leave out, besides the built-in kinds
        ignore=config["data"]["ignore"],
    log:
        f"{LOGS}/manifest/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/manifest/{{dataset}}.tsv"
    threads: config["data"]["scan_threads"]
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        CONDA_ENV
    script:
        "../scripts/build_manifest.py"


rule duplicates:
    """Images whose content (sha256) occurs more than once, and whether the copies are in different classes."""
    input:
        manifest=MANIFEST,
    output:
        duplicates=DUPLICATES,
    log:
        f"{LOGS}/duplicates/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/duplicates/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        CONDA_ENV
    script:
        "../scripts/find_duplicates.py"


rule split:
    """Stratified, seeded train/test split (or the dataset's official one), listing image ids."""
    input:
        manifest=MANIFEST,
    output:
        split=SPLIT,
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
