rule summarize:
    """metrics.csv, the paper's tables beside ours and the metric tables per split (wide CSV, readable
    Markdown), plots, the report's pages (paper comparison, tables, deviations, datasets), and
    datasets.csv: images, excluded files and duplicates per dataset."""
    input:
        metrics=metrics_files(),
        space_metrics=space_metrics_files(),
        manifests=expand(MANIFEST, dataset=config["grid"]["datasets"]),
        excluded=expand(EXCLUDED, dataset=config["grid"]["datasets"]),
        duplicates=expand(DUPLICATES, dataset=config["grid"]["datasets"]),
    output:
        datasets=f"{SUMMARY}/datasets.csv",
        # every grid cell in every embedding space (raw included): quality, re-ranking and fitting time
        spaces=f"{SUMMARY}/spaces.csv",
        # relevance feedback: one row per cell, space, method, round and ranking (full, residual)
        feedback=f"{SUMMARY}/feedback.csv",
        metrics=report(
            f"{SUMMARY}/metrics.csv",
            caption="../report/metrics.rst",
            category="7 Data files (CSV, Markdown)",
            labels={"table": "all grid cells"},
        ),
        tables=report(
            [f"{SUMMARY}/{table}_{split}.{ext}" for table, split, ext in SUMMARY_TABLE_FILES],
            caption="../report/data_files.rst",
            category="7 Data files (CSV, Markdown)",
        ),
        plots=report(
            expand(f"{SUMMARY}/{{plot}}.png", plot=SUMMARY_PLOTS),
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
        features=lambda wildcards: cell_features({**wildcards, "split": montage_split_and_pca()[0]}),
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
        # the cell's folder, from its files (with grid.measure chosen its PCA size is known once validation ran)
        cell=lambda wildcards, input: os.path.dirname(input.cell[0]),
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
