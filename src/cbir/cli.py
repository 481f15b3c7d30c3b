"""The ``cbir`` command line: query a trained grid cell with your own images."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from cbir.query import QUERY_MODES, ModelFolderError, QueryError, format_table, load_query_model, query_images


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cbir", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    query = commands.add_parser(
        "query",
        help="retrieve the most similar gallery images for query images",
        description="Predict the class of each query image and list its top-k most similar training images.",
    )
    query.add_argument("images", nargs="+", help="image files or folders of images")
    query.add_argument("--model", required=True, help="a grid cell: results/<dataset>/<backbone>/<split>/<pca>/")
    query.add_argument("--k", type=int, default=None, help="clusters per class (default: the smallest available)")
    query.add_argument("--top-k", type=int, default=5, help="results per query (default 5)")
    query.add_argument("--mode", choices=[*QUERY_MODES, "all"], default="all", help="retrieval mode (default all)")
    query.add_argument("--metric", choices=["euclidean", "cosine"], default="euclidean")
    query.add_argument("--device", default="auto", help="auto, cpu or cuda")
    query.add_argument("--json", action="store_true", help="print JSON instead of a table")
    query.add_argument("--montage", metavar="PNG", help="also draw the queries and their results into this image")
    return parser


def run_query(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise QueryError("--top-k must be at least 1")
    modes = QUERY_MODES if args.mode == "all" else (args.mode,)
    model = load_query_model(args.model, k=args.k, metric=args.metric)
    answers = query_images(model, args.images, top_k=args.top_k, modes=modes, device=args.device)
    print(json.dumps(answers, indent=2) if args.json else format_table(answers))
    if args.montage:
        from cbir.report import draw_montage

        shown = [a for a in answers if "error" not in a]
        if shown:
            titles = {"clustered": "with clustering", "class": "without clustering", "global": "all images"}
            draw_montage(shown, args.montage, {m: titles[m] for m in modes})
    return 1 if any("error" in a for a in answers) else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_query(args)
    except (ModelFolderError, QueryError) as error:
        print(f"cbir {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
