"""What each choice of validation contributes, from a feature file and its split: the PCA size, each space's
settings (the LDA's shrinkage), re-ranking, and choosing by validation against the settings fixed before.

For each PCA size the cell's choice is made as the workflow makes it (:func:`cbir.evaluation.validation.
validate_cell` on the training split only), refitted on the whole training split, and reported on the test
split once: the global exact ranking of every test image over all training images (P@10, mAP). Beside it,
fixed settings: the paper's ``raw`` space, ``lda`` as shipped before (Ledoit-Wolf shrinkage, no
re-ranking), the chosen space without its re-ranking, and the chosen space with the shipped shrinkage.

    python benchmarks/choices.py --features results/corel1k/features/lite0_224.h5 \\
        --split results/corel1k/splits/80-20.csv

``--label-free`` treats the dataset as a collection without labels: each label-free candidate (raw, l2,
whiten at two powers, with each re-ranking) is scored by the criterion a collection is judged by (how far the
10 nearest photos of a changed copy of a training photo agree with the photo's own, over 200 copies) and,
beside it, by the labelled truth it cannot see (the test split's global mAP); printed: both per candidate,
their rank correlation, and the truth of the criterion's choice against the best candidate's and raw's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import REPO, machine, print_table, record

SPACES = ["raw", "l2", "whiten", "lda", "mlp"]
SHIPPED = {"lda": {"shrinkage": "auto"}, "whiten": {"power": 0.5}}  # the embeddings settings before validation


def default_settings() -> tuple[dict, dict]:
    """The validation and MLP settings of config/config.yaml, as the workflow runs them."""
    import yaml

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    mlp = {key: config["mlp"][key] for key in ("hidden_layers", "alpha", "learning_rate", "max_iter")}
    return config["validation"], mlp


def test_figures(train_x, train_y, test_x, test_y, space, settings, rerank, seed, mlp_settings):
    """Fit ``space`` with ``settings`` on the whole training split; the test split's global exact ranking."""
    from cbir.evaluation.metrics import exact_ranking_quality
    from cbir.fitting.mlp import train_mlp
    from cbir.fitting.rerank import rerank_vectors
    from cbir.fitting.spaces import fit_embedding

    mlp = train_mlp(train_x, train_y, **mlp_settings, seed=seed) if space == "mlp" else None
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
    parser.add_argument("--label-free", action="store_true", help="judge by changed copies, against labelled truth")
    parser.add_argument("--copies", type=int, default=200, help="photos copied (--label-free)")
    parser.add_argument("--root", type=Path, default=None, help="folder relative image paths resolve against")
    args = parser.parse_args()
    if args.label_free:
        label_free(args)
        return

    import pandas as pd

    from cbir.evaluation.validation import validate_cell
    from cbir.fitting.pca import fit_pca_basis
    from cbir.fitting.rerank import NO_RERANK
    from cbir.io import load_features

    split = pd.read_csv(args.split)
    train = load_features(args.features, split.loc[split["subset"] == "train", "id"].tolist())
    test = load_features(args.features, split.loc[split["subset"] == "test", "id"].tolist())
    validation, mlp = default_settings()
    rows = []
    for pca in args.pca:
        start = time.perf_counter()
        if pca == "original":
            project = lambda x: np.asarray(x, dtype=np.float32)  # noqa: E731
        else:
            projection = fit_pca_basis(train.features, int(pca), args.seed)
            project = projection.transform
        train_x, test_x = project(train.features), project(test.features)
        selection = validate_cell(train_x, train.labels, SPACES, SHIPPED, validation, mlp, args.seed)
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
            p10, mean_ap = test_figures(
                train_x, train.labels, test_x, test.labels, space, setting, rerank, args.seed, mlp
            )
            figure = selection.choice(space).figures.get("map_global") if name == "validated" else None
            rows.append({"pca": pca, "setting": name, "space": space, "settings": setting or "",
                         "rerank": rerank.describe(), "validation mAP": figure if figure is not None else "",
                         "test P@10": p10, "test mAP": mean_ap,
                         "validation s": cost if name == "validated" else ""})  # fmt: skip
    print(f"{args.features} ({len(train.ids)} training, {len(test.ids)} test images); {machine()['cpu']}")
    print_table(rows, ["pca", "setting", "space", "settings", "rerank", "validation mAP", "test P@10", "test mAP",
                       "validation s"])  # fmt: skip
    record("choices", rows, features=str(args.features), split=str(args.split))


def label_free(args: argparse.Namespace) -> None:
    import tempfile

    import pandas as pd
    from scipy.stats import spearmanr

    from cbir.evaluation.metrics import exact_ranking_quality
    from cbir.evaluation.validation import validate_cell
    from cbir.extraction.copies import extract_copies, load_copies
    from cbir.fitting.pca import fit_pca_basis
    from cbir.fitting.rerank import Rerank, rerank_vectors
    from cbir.fitting.spaces import fit_embedding
    from cbir.io import load_features

    split = pd.read_csv(args.split)
    train = load_features(args.features, split.loc[split["subset"] == "train", "id"].tolist())
    test = load_features(args.features, split.loc[split["subset"] == "test", "id"].tolist())
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        extract_copies(args.features, Path(tmp) / "copies.h5", args.copies * 2, args.seed, "cpu", args.root)
        copy_seconds = time.perf_counter() - start
        copy_features, originals = load_copies(Path(tmp) / "copies.h5")
    keep = [i for i, original in enumerate(originals) if original in set(train.ids)][: args.copies]
    copy_features, originals = copy_features[keep], [originals[i] for i in keep]
    validation, mlp = default_settings()
    rows = []
    for pca in args.pca:
        project = (lambda x: np.asarray(x, np.float32)) if pca == "original" else fit_pca_basis(
            train.features, int(pca), args.seed).transform  # fmt: skip
        gallery_x, test_x, copies_x = project(train.features), project(test.features), project(copy_features)
        selection = validate_cell(gallery_x, np.zeros(len(gallery_x), int), ["raw", "l2", "whiten"], SHIPPED,
                                  validation, mlp, args.seed, labelled=False,
                                  copies=(copies_x, originals, train.ids))  # fmt: skip
        relevant = test.labels[:, None] == train.labels[None, :]
        truth, criterion = [], []
        for candidate in selection.candidates:
            space, settings = candidate["space"], candidate["settings"]
            embedding = fit_embedding(space, gallery_x, np.zeros(len(gallery_x), int), None, {space: settings})
            rerank = Rerank.from_dict(candidate["rerank"])
            queries, gallery = rerank_vectors(embedding.transform(test_x), embedding.transform(gallery_x), rerank,
                                              embedding.normalised)  # fmt: skip
            truth.append(exact_ranking_quality(queries, gallery, relevant, "global")["map_global"])
            criterion.append(candidate[selection.metric])
        chosen = selection.choice(selection.chosen)
        pick = next(i for i, c in enumerate(selection.candidates)
                    if c["space"] == selection.chosen and c["settings"] == chosen.settings
                    and c["rerank"] == chosen.rerank.as_dict())  # fmt: skip
        raw = next(i for i, c in enumerate(selection.candidates) if c["space"] == "raw" and c["rerank"]["k"] == 0)
        rows.append({"pca": pca, "candidates": len(truth), "spearman": spearmanr(criterion, truth).statistic,
                     "chosen": f"{selection.chosen} {chosen.settings or ''} {chosen.rerank.describe()}".strip(),
                     "criterion overlap@10": criterion[pick], "truth mAP (chosen)": truth[pick],
                     "truth mAP (best)": max(truth), "truth mAP (raw)": truth[raw], "copies": len(originals),
                     "copies s": copy_seconds, "validation s": selection.validation["seconds"]})  # fmt: skip
    print(f"{args.features}: label-free choice by changed copies vs labelled truth; {machine()['cpu']}")
    print_table(rows, list(rows[0]))
    record("choices_label_free", rows, features=str(args.features), split=str(args.split))


if __name__ == "__main__":
    main()
