rule time_extraction:
    """Latency of a query image through the features' own network (decode, preprocess, forward)."""
    input:
        manifest=MANIFEST,
        # the network, seed and precision come from what the feature file recorded
        features=backbone_features,
    output:
        timing=FEATURE_TIMING,
    params:
        # only what changes the timing: sharding settings must not rerun it
        extraction={key: config["extraction"][key] for key in ("device", "batch_size")},
        n_images=config["retrieval"]["timing_images"],
    log:
        f"{LOGS}/time_extraction/{{dataset}}_{{backbone}}.log",
    benchmark:
        f"{BENCHMARKS}/time_extraction/{{dataset}}_{{backbone}}.tsv"
    threads: config["extraction"]["threads"]
    # as soon as the features are there: every evaluation waits for it, and the extraction's threads it needs are
    # free then; later they only free up once the models of every cell are fitted, and the evaluations start last
    priority: 10
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        CONDA_ENV
    script:
        "../scripts/time_extraction.py"


rule evaluate:
    """Accuracy, retrieval quality of every search mode and per-query timings of one grid cell, on at most
    retrieval.eval_queries test images (without labels: each search's recall@k against exact search, and timings)."""
    input:
        features=cell_features,
        timing=FEATURE_TIMING,
        manifest=MANIFEST,
        split=SPLIT,
        projection=f"{CELL}/{PROJECTION}",
        gallery=f"{CELL}/{GALLERY}",
        classifier=classifier_input,
        clusters=f"{CELL}/{clusters_name('{k}')}",
        selection=f"{CELL}/{SELECTION}",
    output:
        metrics=[f"{CELL}/{metrics_name('{k}')}"],
    params:
        spaces=["raw"],
        retrieval=retrieval_settings("top_k", "metric", "faiss", "eval_queries", "eval_device", "timing_queries"),
        rerank=config["embeddings"]["rerank"],
        feedback=config["feedback"],
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
        """The evaluation of the rule above in each of the cell's further embedding spaces (one job: they share the
        test features and labels, read once)."""
        input:
            features=cell_features,
            timing=FEATURE_TIMING,
            manifest=MANIFEST,
            split=SPLIT,
            projection=f"{CELL}/{PROJECTION}",
            gallery=f"{CELL}/{GALLERY}",
            classifier=f"{CELL}/{CLASSIFIER}",
            embeddings=[f"{CELL}/{embedding_name(space)}" for space in EXTRA_SPACES],
            clusters=[f"{CELL}/{clusters_name('{k}', space)}" for space in EXTRA_SPACES],
            selection=f"{CELL}/{SELECTION}",
        output:
            metrics=[f"{CELL}/{metrics_name('{k}', space)}" for space in EXTRA_SPACES],
        params:
            spaces=EXTRA_SPACES,
            retrieval=retrieval_settings("top_k", "metric", "faiss", "eval_queries", "eval_device", "timing_queries"),
            rerank=config["embeddings"]["rerank"],
            feedback=config["feedback"],
            seed=SEED,
        log:
            f"{LOGS}/evaluate_spaces/{{dataset}}_{{backbone}}_{{split}}_{{pca}}_k{{k}}.log",
        benchmark:
            f"{BENCHMARKS}/evaluate_spaces/{{dataset}}_{{backbone}}_{{split}}_{{pca}}_k{{k}}.tsv"
        threads: 1
        priority: 2  # a cell's longest job, at the end of its chain (rule train_mlp)
        resources:
            mem_mb=4000,
            runtime=30,
        conda:
            CONDA_ENV
        script:
            "../scripts/evaluate.py"


checkpoint choose_pca:
    """Of a split's PCA sizes, the one whose chosen setting scored highest on validation inside the training images
    (cbir.search.cell.chosen_cell; a tie keeps the smaller): with grid.measure chosen, the only size that the target
    all_but_summary (cbir index) fits further and measures on the test split."""
    input:
        selections=lambda wildcards: [
            f"{cell_folder(wildcards.dataset, wildcards.backbone, wildcards.split, pca)}/{SELECTION}"
            for pca in map(str, config["grid"]["pca"])
        ],
    output:
        chosen=CHOSEN_PCA,
    log:
        f"{LOGS}/choose_pca/{{dataset}}_{{backbone}}_{{split}}.log",
    benchmark:
        f"{BENCHMARKS}/choose_pca/{{dataset}}_{{backbone}}_{{split}}.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        CONDA_ENV
    script:
        "../scripts/choose_pca.py"
