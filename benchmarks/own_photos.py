"""A real folder of photos end to end, as a new user meets the tool: indexed without labels, queried, served,
updated after adding photos, and deduplicated.

Corel-1K from ../shared/data becomes one flat folder without labels: all but ``--add`` photos,
plus transformed copies (resized to 50%, JPEG quality 40, 10% crop, flip, 5 degree rotation,
brightness +20%: benchmarks/duplicates.py) of ``--copies`` of them. Then, each timed:
``cbir index`` (labels: none, every image in the gallery), ``cbir query`` of one photo,
``cbir serve`` answering one upload, the held-back photos added and ``cbir index`` run again
(only they are extracted), and ``cbir duplicates`` with its default threshold: how many of the
planted copies it groups with their original (recall) and how many of its groups are such copies
(precision). The engine and precision are the defaults (``auto``) unless given.

    nice -n 19 python benchmarks/own_photos.py
    python benchmarks/own_photos.py --copies 20 --engine torch --precision fp32
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, cpu_model, free_port, print_table, record, start_cbir_serve
from duplicates import COREL, transforms
from serve import multipart


def cbir(*args: str, cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "cbir.cli", *args], cwd=cwd, capture_output=True, text=True,
                            check=False)  # fmt: skip
    if result.returncode != 0:
        sys.exit(f"cbir {args[0]} failed:\n{result.stderr[-4000:]}")
    return time.perf_counter() - started, result


def make_collection(folder: Path, n_add: int, n_copies: int) -> tuple[list[Path], dict[str, str]]:
    """The flat folder; returns the held-back photos and, per planted copy's file name, its original's."""
    from PIL import Image

    photos = sorted(COREL.rglob("*.jpg"))
    held_back, kept = photos[:: len(photos) // n_add][:n_add], []
    folder.mkdir(parents=True)
    for photo in photos:
        if photo not in held_back:
            kept.append(shutil.copy(photo, folder / f"{photo.parent.name}_{photo.name}"))
    origin = {}
    for original in [Path(p) for p in kept[:: max(1, len(kept) // n_copies)][:n_copies]]:
        with Image.open(original) as opened:
            image = opened.convert("RGB")
        for name, transform in transforms().items():
            target = folder / f"copy_{original.stem}_{name}.{'jpg' if name == 'jpeg40' else 'png'}"
            transform(image).save(target, **({"quality": 40} if name == "jpeg40" else {}))
            origin[target.name] = original.name
    return held_back, origin


def copy_scores(groups: list[dict], origin: dict[str, str]) -> dict[str, float]:
    """Recall: planted copies grouped with their original; precision: grouped pairs that are original and copy."""
    family = {name: original for name, original in origin.items()} | {o: o for o in origin.values()}
    found = right = pairs = 0
    for group in groups:
        names = [Path(image["path"]).name for image in group["images"]]
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                pairs += 1
                right += a in family and family.get(b) == family[a]
        found += sum(1 for name in names if name in origin and origin[name] in names)
    return {"copies_found": found, "copies_planted": len(origin), "recall": found / max(1, len(origin)),
            "pairs_in_groups": pairs, "precision": right / max(1, pairs)}  # fmt: skip


def serve_once(cell: Path, photo: Path) -> dict[str, float]:
    port = free_port()

    def ready() -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/api/model")
        return connection.getresponse().status == 200

    started = time.perf_counter()
    server = start_cbir_serve(["--model", str(cell), "--port", str(port), "--log-level", "warning"], ready, 180)
    startup = time.perf_counter() - started
    try:
        body, boundary = multipart(str(photo))
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        started = time.perf_counter()
        connection.request("POST", "/api/query", body=body,
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
        response = connection.getresponse()
        answer = json.loads(response.read())
        latency = time.perf_counter() - started
        if response.status != 200:
            sys.exit(f"POST /api/query answered {response.status}: {answer}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"startup_s": startup, "query_s": latency, "modes": ",".join(sorted(answer.get("results", {})))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--add", type=int, default=10, help="photos added before the second index (default 10)")
    parser.add_argument("--copies", type=int, default=30, help="photos given six transformed copies (default 30)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--engine", default=None, help="extraction engine (default: the config's, auto)")
    parser.add_argument("--precision", default=None, help="extraction precision (default: the config's, auto)")
    parser.add_argument("--work", type=Path, help="keep the folder and results here (default: a temporary folder)")
    args = parser.parse_args()
    if not COREL.is_dir():
        sys.exit(f"Corel-1K is not at {COREL}")

    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        folder = root / "photos"
        held_back, origin = make_collection(folder, args.add, args.copies)
        options = ["--labels", "none", "--cores", str(args.cores)]
        for flag, value in (("--engine", args.engine), ("--precision", args.precision)):
            options += [flag, value] if value else []
        rows = []
        wall, first = cbir("index", str(folder), *options, cwd=root)
        plan = root / "results/photos/shards/efficientnet_lite0/plan.json"
        n_images = json.loads(plan.read_text())["n_images"]
        rows.append({"step": f"cbir index ({n_images} photos)", "wall_s": wall,
                     "extracted": json.loads(plan.read_text())["n_extracted"]})  # fmt: skip
        cell = next(line.split("--model ", 1)[1] for line in first.stdout.splitlines() if "cbir query" in line)
        photo = folder / sorted(p.name for p in folder.glob("*.jpg"))[0]
        wall, query = cbir("query", str(photo), "--model", cell, "--json", cwd=root)
        top = [Path(r["path"]).name for r in json.loads(query.stdout)[0]["results"]["global"]]
        rows.append({"step": "cbir query (1 photo)", "wall_s": wall, "note": f"{photo.name} -> {', '.join(top[:3])}"})
        served = serve_once(Path(cell), photo)
        rows.append({"step": "cbir serve: start", "wall_s": served["startup_s"]})
        rows.append({"step": "cbir serve: POST /api/query", "wall_s": served["query_s"], "note": served["modes"]})
        for photo in held_back:
            shutil.copy(photo, folder / f"{photo.parent.name}_{photo.name}")
        wall, _ = cbir("index", str(folder), *options, cwd=root)
        rows.append({"step": f"cbir index again (+{len(held_back)} photos)", "wall_s": wall,
                     "extracted": json.loads(plan.read_text())["n_extracted"]})  # fmt: skip
        features = root / "results/photos/features/efficientnet_lite0.h5"
        wall, _ = cbir("duplicates", str(features), "--json", str(root / "dups.json"), cwd=root)
        scores = copy_scores(json.loads((root / "dups.json").read_text())["groups"], origin)
        note = (
            f"recall {scores['recall']:.3f} ({scores['copies_found']}/{scores['copies_planted']} copies), "
            f"precision {scores['precision']:.3f} of {scores['pairs_in_groups']} pairs"
        )
        rows.append({"step": "cbir duplicates (default threshold)", "wall_s": wall, "note": note})

    print(f"# {cpu_model()}, {args.cores} cores; engine {args.engine or 'auto'}, precision {args.precision or 'auto'}")
    print_table(rows, ["step", "wall_s", "extracted", "note"])
    record("own_photos", rows, copies=args.copies, added=args.add, duplicates=scores)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "benchmarks"))
    main()
