rule evaluate:
    """Accuracy, precision@k of each retrieval mode and per-query timings of one grid cell."""
    input:
        features="results/{dataset}/features/{backbone}.h5",
        split="results/{dataset}/splits/{split}.csv",
        projection=f"{CELL}/projection.h5",
        gallery=f"{CELL}/gallery.h5",
        classifier=f"{CELL}/classifier.h5",
        clusters=f"{CELL}/clusters_k{{k}}.h5",
    output:
        metrics=f"{CELL}/metrics_k{{k}}.json",
    params:
        retrieval=config["retrieval"],
        seed=SEED,
    log:
        f"{LOGS}/evaluate/{{dataset}}_{{backbone}}_{{split}}_{{pca}}_k{{k}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{dataset}}_{{backbone}}_{{split}}_{{pca}}_k{{k}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        CONDA_ENV
    script:
        "../scripts/evaluate.py"


rule summarize:
    """metrics.csv, the paper's tables per split (CSV and Markdown) and the accuracy plot."""
    input:
        metrics=metrics_files(),
    output:
        metrics="results/summary/metrics.csv",
        plot="results/summary/accuracy_vs_pca.png",
        tables=expand(
            "results/summary/{table}_{split}.{ext}",
            table=["accuracy", "retrieval_time"],
            split=config["grid"]["splits"],
            ext=["csv", "md"],
        ),
    params:
        splits=config["grid"]["splits"],
        out_dir=lambda wildcards, output: os.path.dirname(output.metrics),
    log:
        f"{LOGS}/summarize.log",
    benchmark:
        f"{BENCHMARKS}/summarize.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        CONDA_ENV
    script:
        "../scripts/summarize.py"
