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

``--export`` runs the same steps on the phone/NAS export that ``tests/photo_export.py`` generates
instead (no Corel-1K needed): JPEG, PNG, HEIC, AVIF and DNG photos in month folders, a Dups folder,
a camera's RAW+JPEG and RAW+HEIC pairs, and beside them videos, sidecars, OS files, hidden and
thumbnail folders, a truncated and an empty JPEG. A HEIC photo is queried, a DNG uploaded to
``cbir serve``, a month of JPEG, HEIC, AVIF and DNG photos (one more RAW+JPEG pair among them)
added, and ``cbir duplicates`` lists its groups (the Dups copies). After each ``cbir index``:
the photos indexed, the files ignored by kind (``ignored.csv``), the files excluded with the reason.

    nice -n 19 python benchmarks/own_photos.py
    python benchmarks/own_photos.py --copies 20 --engine torch --precision fp32
    python benchmarks/own_photos.py --export --engine torch --precision fp32
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from _common import REPO, cpu_model, free_port, print_table, record, start_cbir_serve
from duplicates import COREL, transforms
from serve import multipart

from cbir.data.ignore import ignored_summary
from cbir.data.manifest import read_manifest

sys.path.insert(0, str(REPO / "tests"))
from photo_export import make_photo_export, write_photo  # the tests' generated export and their format writers

# the month --export adds before the second index, as (name, how write_photo writes it): IMG_2006.DNG is
# the raw of IMG_2006.JPG's shot (ignored: raw_with_jpeg), so 6 photos are added
EXPORT_ADDED = {"IMG_2001.jpg": "JPEG", "IMG_2002.JPG": "JPEG", "IMG_2003.HEIC": "HEIC", "IMG_2004.avif": "AVIF",
                "DSC_2005.DNG": "DNG", "IMG_2006.JPG": "JPEG", "IMG_2006.DNG": "DNG with preview"}  # fmt: skip


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
    top = answer["results"]["global"][0]
    return {"startup_s": startup, "query_s": latency, "modes": ",".join(sorted(answer.get("results", {}))),
            "top": f"{Path(top['id']).name} (distance {top['distance']:.3g})"}  # fmt: skip


def index_counts(dataset: Path) -> dict[str, Any]:
    """What ``cbir index`` made of the folder: photos indexed, files ignored per kind, files excluded with reasons."""
    ignored = pd.read_csv(dataset / "ignored.csv", keep_default_na=False)
    excluded = pd.read_csv(dataset / "excluded.csv", keep_default_na=False)
    reasons = {Path(path).name: reason for path, reason in zip(excluded["path"], excluded["reason"], strict=True)}
    return {"indexed": len(read_manifest(dataset / "manifest.csv")), "ignored": int(ignored["files"].sum()),
            "ignored_by_kind": ignored_summary(ignored), "excluded": reasons}  # fmt: skip


def describe_counts(counts: dict[str, Any]) -> str:
    excluded = "; ".join(f"{name}: {reason}" for name, reason in counts["excluded"].items())
    return (f"{counts['indexed']} indexed; {counts['ignored']} ignored ({counts['ignored_by_kind'] or 'none'}); "
            f"{len(counts['excluded'])} excluded" + (f" ({excluded})" if excluded else ""))  # fmt: skip


def run_steps(root: Path, folder: Path, options: list[str], photo: Path, upload: Path, add: Callable[[], int],
              describe: Callable[[list[dict]], str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:  # fmt: skip
    """``cbir index``, ``cbir query`` of ``photo``, ``cbir serve`` answering ``upload``, ``add`` (the photos
    added) and ``cbir index`` again, ``cbir duplicates`` (its groups as ``describe`` says): the timed rows,
    and the counts after each index."""
    rows, counts = [], []
    dataset = root / "results" / folder.name
    plan = dataset / "shards/efficientnet_lite0/plan.json"
    wall, first = cbir("index", str(folder), *options, cwd=root)
    n_images = json.loads(plan.read_text())["n_images"]
    rows.append({"step": f"cbir index ({n_images} photos)", "wall_s": wall,
                 "extracted": json.loads(plan.read_text())["n_extracted"]})  # fmt: skip
    counts.append({"after": "cbir index", **index_counts(dataset)})
    cell = next(line.split("--model ", 1)[1] for line in first.stdout.splitlines() if "cbir query" in line)
    wall, query = cbir("query", str(photo), "--model", cell, "--json", cwd=root)
    top = json.loads(query.stdout)[0]["results"]["global"]
    note = f"{photo.name} -> {', '.join(Path(r['id']).name for r in top[:3])} (distance {top[0]['distance']:.3g})"
    rows.append({"step": "cbir query (1 photo)", "wall_s": wall, "note": note})
    served = serve_once(Path(cell), upload)
    rows.append({"step": "cbir serve: start", "wall_s": served["startup_s"]})
    rows.append({"step": "cbir serve: POST /api/query", "wall_s": served["query_s"],
                 "note": f"{upload.name} -> {served['top']}; {served['modes']}"})  # fmt: skip
    n_added = add()
    wall, _ = cbir("index", str(folder), *options, cwd=root)
    rows.append({"step": f"cbir index again (+{n_added} photos)", "wall_s": wall,
                 "extracted": json.loads(plan.read_text())["n_extracted"]})  # fmt: skip
    counts.append({"after": "cbir index again", **index_counts(dataset)})
    features = dataset / "features/efficientnet_lite0.h5"
    wall, _ = cbir("duplicates", str(features), "--json", str(root / "dups.json"), cwd=root)
    groups = json.loads((root / "dups.json").read_text())["groups"]
    rows.append({"step": "cbir duplicates (default threshold)", "wall_s": wall, "note": describe(groups)})
    return rows, counts


def add_export_month(folder: Path) -> int:
    """:data:`EXPORT_ADDED` written into ``folder``/2025/01 (a RAW the same shot as its JPEG); the photos added."""
    for seed, (name, kind) in enumerate(EXPORT_ADDED.items(), start=2000):
        write_photo(folder / "2025" / "01" / name, kind, seed - (name == "IMG_2006.DNG"))
    return len(EXPORT_ADDED) - 1


def describe_groups(groups: list[dict]) -> str:
    shown = ["{" + ", ".join(Path(image["id"]).name for image in group["images"]) + "}" for group in groups]
    return f"{len(groups)} group(s): {' '.join(shown)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", action="store_true",
                        help="tests/photo_export.py's generated phone/NAS export, not Corel-1K")  # fmt: skip
    parser.add_argument("--add", type=int, default=10, help="photos added before the second index (default 10)")
    parser.add_argument("--copies", type=int, default=30, help="photos given six transformed copies (default 30)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--engine", default=None, help="extraction engine (default: the config's, auto)")
    parser.add_argument("--precision", default=None, help="extraction precision (default: the config's, auto)")
    parser.add_argument("--work", type=Path, help="keep the folder and results here (default: a temporary folder)")
    args = parser.parse_args()
    if not args.export and not COREL.is_dir():
        sys.exit(f"Corel-1K is not at {COREL} (--export runs on a generated photo export instead)")

    scores: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        folder = root / "photos"
        options = ["--labels", "none", "--cores", str(args.cores)]
        for flag, value in (("--engine", args.engine), ("--precision", args.precision)):
            options += [flag, value] if value else []
        if args.export:
            make_photo_export(folder, formats=True)
            photo, upload = folder / "2024/10/IMG_1010.HEIC", folder / "2024/12/DSC_1211.dng"
            rows, counts = run_steps(root, folder, options, photo, upload, lambda: add_export_month(folder),
                                     describe_groups)  # fmt: skip
        else:
            held_back, origin = make_collection(folder, args.add, args.copies)
            photo = folder / sorted(p.name for p in folder.glob("*.jpg"))[0]

            def add_held_back() -> int:
                for held in held_back:
                    shutil.copy(held, folder / f"{held.parent.name}_{held.name}")
                return len(held_back)

            def describe_copies(groups: list[dict]) -> str:
                scores.update(copy_scores(groups, origin))
                return (f"recall {scores['recall']:.3f} ({scores['copies_found']}/{scores['copies_planted']} copies), "
                        f"precision {scores['precision']:.3f} of {scores['pairs_in_groups']} pairs")  # fmt: skip

            rows, counts = run_steps(root, folder, options, photo, photo, add_held_back, describe_copies)

    source = "the photo export of tests/photo_export.py" if args.export else "Corel-1K"
    print(f"# {cpu_model()}, {args.cores} cores; engine {args.engine or 'auto'}, precision {args.precision or 'auto'}; "
          f"{source}")  # fmt: skip
    print_table(rows, ["step", "wall_s", "extracted", "note"])
    for count in counts:
        print(f"# after {count['after']}: {describe_counts(count)}")
    extra = {"source": "export"} if args.export else {"copies": args.copies, "added": args.add, "duplicates": scores}
    record("own_photos", rows, **extra, counts=counts)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "benchmarks"))
    main()
