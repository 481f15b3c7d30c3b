rule time_extraction:
    """Latency of a query image through the features' own network (decode, preprocess, forward)."""
    input:
        manifest=MANIFEST,
        # the network, seed and precision come from what the feature file recorded
        features=FEATURES,
    output:
        timing="results/{dataset}/features/{backbone}.timing.json",
    params:
        # only what changes the timing: sharding settings must not rerun it
        extraction={key: config["extraction"][key] for key in ("device", "batch_size")},
        n_images=config["retrieval"]["timing_images"],
    log:
        f"{LOGS}/time_extraction/{{dataset}}_{{backbone}}.log",
    benchmark:
        f"{BENCHMARKS}/time_extraction/{{dataset}}_{{backbone}}.tsv"
    threads: config["extraction"]["threads"]
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        CONDA_ENV
    script:
        "../scripts/time_extraction.py"


rule evaluate:
    """Accuracy, retrieval quality of every search mode and per-query timings of one grid cell (without labels: each
    search's recall@k against exact search, and timings)."""
    input:
        features=FEATURES,
        timing="results/{dataset}/features/{backbone}.timing.json",
        manifest=MANIFEST,
        split=SPLIT,
        projection=f"{CELL}/{PROJECTION}",
        gallery=f"{CELL}/{GALLERY}",
        classifier=classifier_input,
        clusters=f"{CELL}/{clusters_name('{k}')}",
    output:
        metrics=[f"{CELL}/{metrics_name('{k}')}"],
    params:
        spaces=["raw"],
        retrieval=retrieval_settings("top_k", "metric", "faiss", "eval_queries"),
        rerank=config["embeddings"]["rerank"],
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


if EXTRA_SPACES:

    rule evaluate_spaces:
        """The evaluation of the rule above in each of the cell's further embedding spaces."""
        input:
            features=FEATURES,
            timing="results/{dataset}/features/{backbone}.timing.json",
            manifest=MANIFEST,
            split=SPLIT,
            projection=f"{CELL}/{PROJECTION}",
            gallery=f"{CELL}/{GALLERY}",
            classifier=f"{CELL}/{CLASSIFIER}",
            embeddings=[f"{CELL}/{embedding_name(space)}" for space in EXTRA_SPACES],
            clusters=[f"{CELL}/{clusters_name('{k}', space)}" for space in EXTRA_SPACES],
        output:
            metrics=[f"{CELL}/{metrics_name('{k}', space)}" for space in EXTRA_SPACES],
        params:
            spaces=EXTRA_SPACES,
            retrieval=retrieval_settings("top_k", "metric", "faiss"),
            rerank=config["embeddings"]["rerank"],
            seed=SEED,
        log:
            f"{LOGS}/evaluate_spaces/{{dataset}}_{{backbone}}_{{split}}_{{pca}}_k{{k}}.log",
        benchmark:
            f"{BENCHMARKS}/evaluate_spaces/{{dataset}}_{{backbone}}_{{split}}_{{pca}}_k{{k}}.tsv"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        conda:
            CONDA_ENV
        script:
            "../scripts/evaluate.py"


rule summarize:
    """metrics.csv, the paper's tables beside ours and the metric tables per split (wide CSV, readable
    Markdown), plots, the report's pages (paper comparison, tables, deviations, datasets), and
    datasets.csv: images, excluded files and duplicates per dataset."""
    input:
        metrics=metrics_files(),
        space_metrics=space_metrics_files(),
        manifests=expand(MANIFEST, dataset=config["grid"]["datasets"]),
        excluded=expand("results/{dataset}/excluded.csv", dataset=config["grid"]["datasets"]),
        duplicates=expand("results/{dataset}/duplicates.csv", dataset=config["grid"]["datasets"]),
    output:
        datasets="results/summary/datasets.csv",
        # every grid cell in every embedding space (raw included): quality, re-ranking and fitting time
        spaces="results/summary/spaces.csv",
        metrics=report(
            "results/summary/metrics.csv",
            caption="../report/metrics.rst",
            category="7 Data files (CSV, Markdown)",
            labels={"table": "all grid cells"},
        ),
        tables=report(
            [f"results/summary/{table}_{split}.{ext}" for table, split, ext in SUMMARY_TABLE_FILES],
            caption="../report/data_files.rst",
            category="7 Data files (CSV, Markdown)",
        ),
        plots=report(
            expand("results/summary/{plot}.png", plot=SUMMARY_PLOTS),
            caption="../report/plots.rst",
            category="3 Plots",
        ),
        # the report's pages: page_<page> (HTML), page_<page>_md (Markdown)
        **SUMMARY_PAGES,
    params:
        # what each of output.tables, output.plots and the page outputs is, in their order
        tables=SUMMARY_TABLE_FILES,
        plots=SUMMARY_PLOTS,
        pages=SUMMARY_PAGE_FILES,
        datasets=config["grid"]["datasets"],
        # which datasets are compared with the paper's, and what the deviations name
        settings=summary_settings(config),
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


rule montage:
    """Retrieval montage like the paper's figures, for a few fixed test queries of one dataset."""
    input:
        features=FEATURES,
        split=montage_split,
        cell=lambda wildcards: [f"{montage_cell(wildcards)}/{name}" for name in model_files(config["grid"]["k"][0])],
    output:
        montage=report(
            MONTAGE,
            caption="../report/montage.rst",
            category="4 Montages",
            labels={"dataset": "{dataset}", "backbone": "{backbone}"},
        ),
    params:
        cell=montage_cell,
        k=config["grid"]["k"][0],
        n_queries=config["retrieval"]["montage_queries"],
        retrieval=retrieval_settings("top_k", "metric"),
    log:
        f"{LOGS}/montage/{{dataset}}_{{backbone}}.log",
    benchmark:
        f"{BENCHMARKS}/montage/{{dataset}}_{{backbone}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        CONDA_ENV
    script:
        "../scripts/montage.py"
