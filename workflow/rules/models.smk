rule fit_pca:
    """One exact PCA per training split, at the grid's largest size."""
    input:
        features="results/{dataset}/features/{backbone}.h5",
        split="results/{dataset}/splits/{split}.csv",
    output:
        basis="results/{dataset}/{backbone}/{split}/pca_basis.h5",
    params:
        n_components=pca_basis_size,
        seed=SEED,
    log:
        f"{LOGS}/fit_pca/{{dataset}}_{{backbone}}_{{split}}.log",
    benchmark:
        f"{BENCHMARKS}/fit_pca/{{dataset}}_{{backbone}}_{{split}}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        CONDA_ENV
    script:
        "../scripts/fit_pca.py"


rule project:
    """PCA(n) projection of the training images: the cell's gallery."""
    input:
        features="results/{dataset}/features/{backbone}.h5",
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
        mem_mb=4000,
        runtime=30,
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
        mem_mb=4000,
        runtime=30,
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
        mem_mb=4000,
        runtime=60,
    conda:
        CONDA_ENV
    script:
        "../scripts/train_mlp.py"
