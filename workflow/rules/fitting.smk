rule fit_pca:
    """One PCA per training split, at the grid's largest size: exact, or streamed for large training sets."""
    input:
        features=kept_until_due(cell_features, PCA_BASIS),
        split=kept_until_due(SPLIT, PCA_BASIS),
    output:
        basis=PCA_BASIS,
    params:
        n_components=pca_basis_size,
        pca_fit=config["pca_fit"],
        seed=SEED,
    log:
        f"{LOGS}/fit_pca/{{dataset}}_{{backbone}}_{{split}}.log",
    benchmark:
        f"{BENCHMARKS}/fit_pca/{{dataset}}_{{backbone}}_{{split}}.tsv"
    threads: 1
    resources:
        mem_mb=fit_pca_mem,
        runtime=runtime_from_input(10, 100),
    conda:
        CONDA_ENV
    script:
        "../scripts/fit_pca.py"


rule project:
    """PCA(n) projection of the training images: the cell's gallery."""
    input:
        features=cell_features,
        manifest=MANIFEST,
        split=SPLIT,
        basis=basis_input,
    output:
        projection=f"{CELL}/{PROJECTION}",
        gallery=f"{CELL}/{GALLERY}",
    params:
        seed=SEED,
        labelled=lambda wildcards: dataset_is_labelled(config, wildcards.dataset),
    log:
        f"{LOGS}/project/{{dataset}}_{{backbone}}_{{split}}_{{pca}}.log",
    benchmark:
        f"{BENCHMARKS}/project/{{dataset}}_{{backbone}}_{{split}}_{{pca}}.tsv"
    threads: 1
    resources:
        # the training rows of the feature file, and their projection
        mem_mb=mem_from_input(1000, 3),
        runtime=runtime_from_input(10, 200),
    conda:
        CONDA_ENV
    script:
        "../scripts/project.py"


rule cluster:
    """k-means with k clusters inside each class of the training images (a collection without labels is one class:
    k-means over the whole gallery)."""
    input:
        gallery=kept_until_due(f"{CELL}/{GALLERY}", f"{CELL}/{clusters_name('{k}')}"),
    output:
        clusters=f"{CELL}/{clusters_name('{k}')}",
    params:
        kmeans=config["kmeans"],
        seed=SEED,
        refit=config["update"]["refit"],
    log:
        f"{LOGS}/cluster/{{dataset}}_{{backbone}}_{{split}}_{{pca}}_k{{k}}.log",
    benchmark:
        f"{BENCHMARKS}/cluster/{{dataset}}_{{backbone}}_{{split}}_{{pca}}_k{{k}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_from_input(1000, 4),
        runtime=runtime_from_input(10, 50),
    conda:
        CONDA_ENV
    script:
        "../scripts/cluster.py"


rule train_mlp:
    """The MLP classifier on the reduced training features."""
    input:
        gallery=kept_until_due(f"{CELL}/{GALLERY}", f"{CELL}/{CLASSIFIER}"),
    output:
        classifier=f"{CELL}/{CLASSIFIER}",
    params:
        mlp=config["mlp"],
        seed=SEED,
    log:
        f"{LOGS}/train_mlp/{{dataset}}_{{backbone}}_{{split}}_{{pca}}.log",
    benchmark:
        f"{BENCHMARKS}/train_mlp/{{dataset}}_{{backbone}}_{{split}}_{{pca}}.tsv"
    threads: 1
    # a cell's chain to its longest job (select_settings and train_mlp -> fit_spaces -> evaluate_spaces) before the
    # jobs that end a chain (cluster, evaluate): among ready jobs Snakemake otherwise runs the largest inputs
    # first, and evaluate (which reads the whole feature file) held back the 70,000-image run's largest cell
    priority: 1
    resources:
        mem_mb=mem_from_input(1000, 4),
        runtime=runtime_from_input(30, 20),
    conda:
        CONDA_ENV
    script:
        "../scripts/train_mlp.py"


rule select_settings:
    """Each space's settings and re-ranking, and the space searched, chosen on a validation part of the cell's
    training images (never its test images); a collection without labels, by how well changed copies of its
    photos find them."""
    input:
        unpack(copies_input),
        gallery=kept_until_due(f"{CELL}/{GALLERY}", f"{CELL}/{SELECTION}"),
    output:
        selection=f"{CELL}/{SELECTION}",
    params:
        spaces=["raw", *EXTRA_SPACES],
        options={key: value for key, value in config["embeddings"].items() if key != "rerank"},
        validation=config["validation"],
        mlp=config["mlp"],
        metric=config["retrieval"]["metric"],
        seed=SEED,
        labelled=lambda wildcards: dataset_is_labelled(config, wildcards.dataset),
    log:
        f"{LOGS}/select_settings/{{dataset}}_{{backbone}}_{{split}}_{{pca}}.log",
    benchmark:
        f"{BENCHMARKS}/select_settings/{{dataset}}_{{backbone}}_{{split}}_{{pca}}.tsv"
    threads: 1
    priority: 1  # see train_mlp
    resources:
        mem_mb=mem_from_input(1000, 6),
        runtime=runtime_from_input(10, 200),
    conda:
        CONDA_ENV
    script:
        "../scripts/select_settings.py"


if EXTRA_SPACES:

    rule fit_spaces:
        """The cell's embedding spaces beyond the paper's (grid.embeddings), fitted on its training images, each
        with k-means inside each class for every k of the grid."""
        input:
            gallery=kept_until_due(f"{CELL}/{GALLERY}", f"{CELL}/{embedding_name(EXTRA_SPACES[0])}"),
            classifier=kept_until_due(f"{CELL}/{CLASSIFIER}", f"{CELL}/{embedding_name(EXTRA_SPACES[0])}"),
            # each space's settings, as validation chose them
            selection=kept_until_due(f"{CELL}/{SELECTION}", f"{CELL}/{embedding_name(EXTRA_SPACES[0])}"),
        output:
            embeddings=[f"{CELL}/{embedding_name(space)}" for space in EXTRA_SPACES],
            clusters=[f"{CELL}/{clusters_name(k, space)}" for space in EXTRA_SPACES for k in config["grid"]["k"]],
        params:
            spaces=EXTRA_SPACES,
            ks=config["grid"]["k"],
            kmeans=config["kmeans"],
            seed=SEED,
                refit=config["update"]["refit"],
        log:
            f"{LOGS}/fit_spaces/{{dataset}}_{{backbone}}_{{split}}_{{pca}}.log",
        benchmark:
            f"{BENCHMARKS}/fit_spaces/{{dataset}}_{{backbone}}_{{split}}_{{pca}}.tsv"
        threads: 1
        priority: 2  # see train_mlp
        resources:
            mem_mb=mem_from_input(1000, 6),
            runtime=runtime_from_input(10, 100),
        conda:
            CONDA_ENV
        wildcard_constraints:
            dataset=one_of(LABELLED),
        script:
            "../scripts/fit_spaces.py"


# a collection without labels: its label-free spaces, with k-means over the whole collection for its own k
for collection in COLLECTIONS if LABEL_FREE_SPACES else []:
    cells = CELL.replace("{dataset}", collection)

    rule:
        name:
            f"fit_collection_spaces_{collection}"
        input:
            gallery=kept_until_due(f"{CELL}/{GALLERY}", f"{CELL}/{embedding_name(LABEL_FREE_SPACES[0])}", collection),
            selection=kept_until_due(
                f"{CELL}/{SELECTION}", f"{CELL}/{embedding_name(LABEL_FREE_SPACES[0])}", collection
            ),
        output:
            embeddings=[f"{cells}/{embedding_name(space)}" for space in LABEL_FREE_SPACES],
            clusters=[
                f"{cells}/{clusters_name(k, space)}"
                for space in LABEL_FREE_SPACES
                for k in cluster_counts(config, collection)
            ],
        params:
            spaces=LABEL_FREE_SPACES,
            ks=cluster_counts(config, collection),
            kmeans=config["kmeans"],
            seed=SEED,
            refit=config["update"]["refit"],
        log:
            f"{LOGS}/fit_spaces/{collection}_{{backbone}}_{{split}}_{{pca}}.log",
        benchmark:
            f"{BENCHMARKS}/fit_spaces/{collection}_{{backbone}}_{{split}}_{{pca}}.tsv"
        threads: 1
        priority: 2  # see train_mlp
        resources:
            mem_mb=mem_from_input(1000, 6),
            runtime=runtime_from_input(10, 100),
        conda:
            CONDA_ENV
        script:
            "../scripts/fit_spaces.py"
