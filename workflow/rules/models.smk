rule fit_pca:
    """One PCA per training split, at the grid's largest size: exact, or streamed for large training sets."""
    input:
        features="results/{dataset}/features/{backbone}.h5",
        split="results/{dataset}/splits/{split}.csv",
    output:
        basis="results/{dataset}/{backbone}/{split}/pca_basis.h5",
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
        features="results/{dataset}/features/{backbone}.h5",
        manifest="results/{dataset}/manifest.csv",
        split="results/{dataset}/splits/{split}.csv",
        basis=basis_input,
    output:
        projection=f"{CELL}/projection.h5",
        gallery=f"{CELL}/gallery.h5",
    params:
        seed=SEED,
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
    """k-means with k clusters inside each class of the training images."""
    input:
        gallery=f"{CELL}/gallery.h5",
    output:
        clusters=f"{CELL}/clusters_k{{k}}.h5",
    params:
        kmeans=config["kmeans"],
        seed=SEED,
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
        gallery=f"{CELL}/gallery.h5",
    output:
        classifier=f"{CELL}/classifier.h5",
    params:
        mlp=config["mlp"],
        seed=SEED,
    log:
        f"{LOGS}/train_mlp/{{dataset}}_{{backbone}}_{{split}}_{{pca}}.log",
    benchmark:
        f"{BENCHMARKS}/train_mlp/{{dataset}}_{{backbone}}_{{split}}_{{pca}}.tsv"
    threads: 1
    resources:
        mem_mb=mem_from_input(1000, 4),
        runtime=runtime_from_input(30, 20),
    conda:
        CONDA_ENV
    script:
        "../scripts/train_mlp.py"
