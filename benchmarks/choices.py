"""What each choice of validation contributes, from a feature file and its split: the PCA size, each space's
settings (the LDA's shrinkage), re-ranking, and choosing by validation against the settings fixed before.

For each PCA size the cell's choice is made as the workflow makes it (:func:`cbir.evaluation.validation.
validate_cell` on the training split only), refitted on the whole training split, and reported on the test
split once: the global exact ranking of every test image over all training images (P@10, mAP). Beside it,
fixed settings: the paper's ``raw`` space, ``lda`` as shipped before (Ledoit-Wolf shrinkage, no
re-ranking), the chosen space without its re-ranking, and the chosen space with the shipped shrinkage.

    python benchmarks/choices.py --features results/corel1k/features/lite0_224.h5 \\
        --split results/corel1k/splits/80-20.csv
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import machine, print_table, record

CONFIG_VALIDATION = {
    "fraction": 0.2,
    "candidates": {"lda": {"shrinkage": ["auto", None, 0.1]}, "whiten": {"power": [0.5, 0.25]}},
    "rerank": {"k": [3, 5, 10], "alpha": [1, 3]},
}
SPACES = ["raw", "l2", "whiten", "lda", "mlp"]
MLP = {"hidden_layers": [256], "alpha": 1e-4, "learning_rate": 1e-3, "max_iter": 300}


def test_figures(train_x, train_y, test_x, test_y, space, settings, rerank, seed):
    """Fit ``space`` with ``settings`` on the whole training split; the test split's global exact ranking."""
    from cbir.evaluation.metrics import exact_ranking_quality
    from cbir.fitting.mlp import train_mlp
    from cbir.fitting.rerank import rerank_vectors
    from cbir.fitting.spaces import fit_embedding

    mlp = train_mlp(train_x, train_y, **MLP, seed=seed) if space == "mlp" else None
    embedding = fit_embedding(space, train_x, train_y, mlp, {space: settings})
    queries, gallery = rerank_vectors(embedding.transform(test_x), embedding.transform(train_x), rerank,
                                      embedding.normalised)  # fmt: skip
    figures = exact_ranking_quality(queries, gallery, test_y[:, None] == train_y[None, :], "global")
    return figures["precision_at_10_global"], figures["map_global"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, required=True, help="a feature file of the workflow")
    parser.add_argument("--split", type=Path, required=True, help="its split file (id, label, subset)")
    parser.add_argument("--pca", nargs="+", default=["100", "256", "original"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import pandas as pd

    from cbir.evaluation.validation import validate_cell
    from cbir.fitting.pca import fit_pca_basis
    from cbir.fitting.rerank import NO_RERANK
    from cbir.io import load_features

    split = pd.read_csv(args.split)
    train = load_features(args.features, split.loc[split["subset"] == "train", "id"].tolist())
    test = load_features(args.features, split.loc[split["subset"] == "test", "id"].tolist())
    rows = []
    for pca in args.pca:
        start = time.perf_counter()
        if pca == "original":
            project = lambda x: np.asarray(x, dtype=np.float32)  # noqa: E731
        else:
            projection = fit_pca_basis(train.features, int(pca), args.seed)
            project = projection.transform
        train_x, test_x = project(train.features), project(test.features)
        shipped = {"lda": {"shrinkage": "auto"}, "whiten": {"power": 0.5}}  # the embeddings settings before
        selection = validate_cell(train_x, train.labels, SPACES, shipped, CONFIG_VALIDATION, MLP, args.seed)
        chosen = selection.choice(selection.chosen)
        cost = time.perf_counter() - start
        settings = {
            "validated": (selection.chosen, chosen.settings, chosen.rerank),
            "chosen, no re-ranking": (selection.chosen, chosen.settings, NO_RERANK),
            "lda as shipped (auto)": ("lda", {"shrinkage": "auto"}, NO_RERANK),
            "lda none": ("lda", {"shrinkage": None}, NO_RERANK),
            "l2": ("l2", {}, NO_RERANK),
            "raw (paper)": ("raw", {}, NO_RERANK),
        }
        for name, (space, setting, rerank) in settings.items():
            p10, mean_ap = test_figures(train_x, train.labels, test_x, test.labels, space, setting, rerank, args.seed)
            figure = selection.choice(space).figures.get("map_global") if name == "validated" else None
            rows.append({"pca": pca, "setting": name, "space": space, "settings": setting or "",
                         "rerank": rerank.describe(), "validation mAP": figure if figure is not None else "",
                         "test P@10": p10, "test mAP": mean_ap,
                         "validation s": cost if name == "validated" else ""})  # fmt: skip
    print(f"{args.features} ({len(train.ids)} training, {len(test.ids)} test images); {machine()['cpu']}")
    print_table(rows, ["pca", "setting", "space", "settings", "rerank", "validation mAP", "test P@10", "test mAP",
                       "validation s"])  # fmt: skip
    record("choices", rows, features=str(args.features), split=str(args.split))


if __name__ == "__main__":
    main()
