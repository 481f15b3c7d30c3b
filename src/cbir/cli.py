"""The ``cbir`` command line: query a trained grid cell with your own images, or serve it as a web page."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from cbir.cell import ModelFolderError, load_cell
from cbir.query import Embedder, QueryError, format_table, query_images
from cbir.retrieve import MODE_TITLES, MODES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cbir", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    query = commands.add_parser(
        "query",
        help="retrieve the most similar gallery images for query images",
        description="Predict the class of each query image and list its top-k most similar training images.",
    )
    query.add_argument("images", nargs="+", help="image files or folders of images")
    add_model_arguments(query)
    query.add_argument("--top-k", type=int, default=5, help="results per query (default 5)")
    query.add_argument("--mode", choices=[*MODES, "all"], default="all", help="retrieval mode (default all)")
    query.add_argument("--json", action="store_true", help="print JSON instead of a table")
    query.add_argument("--montage", metavar="PNG", help="also draw the queries and their results into this image")
    add_serve_parser(commands)
    return parser


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The grid cell to load and how to run it: shared by query and serve."""
    parser.add_argument("--model", required=True, help="a grid cell: results/<dataset>/<backbone>/<split>/<pca>/")
    parser.add_argument("--k", type=int, default=None, help="clusters per class (default: the smallest available)")
    parser.add_argument("--metric", choices=["euclidean", "cosine"], default="euclidean")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="a web page and JSON API to search a trained grid cell with your own image",
        description="Load one grid cell once and serve a search page (/) and a JSON API (/api/..., schema at /docs).",
    )
    add_model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--top-k", type=int, default=5, help="results per mode unless a request asks (default 5)")
    serve.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload in MB (default 10)")
    serve.add_argument("--max-pixels", type=int, default=40_000_000, help="largest accepted image in pixels")
    serve.add_argument("--threads", type=int, default=None, help="CPU threads of the CNN forward (default: torch's)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run_query(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise QueryError("--top-k must be at least 1")
    modes = MODES if args.mode == "all" else (args.mode,)
    model = load_cell(args.model, k=args.k, metric=args.metric)
    embedder = Embedder(model.record, args.device)
    if embedder.notice:
        print(f"cbir query: note: {embedder.notice}", file=sys.stderr)
    answers = query_images(model, args.images, top_k=args.top_k, modes=modes, embedder=embedder)
    print(json.dumps(answers, indent=2) if args.json else format_table(answers))
    if args.montage:
        from cbir.report import draw_montage

        shown = [a for a in answers if "error" not in a]
        if shown:
            draw_montage(shown, args.montage, {m: MODE_TITLES[m].short for m in modes})
    return 1 if any("error" in a for a in answers) else 0


def run_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cbir.serve import MAX_TOP_K, ServeSettings, create_app, is_loopback, run_server

    if not 1 <= args.top_k <= MAX_TOP_K:
        raise QueryError(f"--top-k must be between 1 and {MAX_TOP_K}")
    if args.max_upload_mb <= 0 or args.max_pixels <= 0 or (args.threads is not None and args.threads < 1):
        raise QueryError("--max-upload-mb, --max-pixels and --threads must be positive")
    settings = ServeSettings(
        model=Path(args.model),
        k=args.k,
        top_k=args.top_k,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_pixels=args.max_pixels,
        device=args.device,
        metric=args.metric,
        threads=args.threads,
    )
    app = create_app(settings)
    if not is_loopback(args.host):
        print(f"cbir serve: warning: listening on {args.host}, reachable from other machines", file=sys.stderr)
    print(f"cbir serve: http://{args.host}:{args.port}/ (API schema at /docs)", file=sys.stderr)
    run_server(app, args.host, args.port, args.log_level)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_serve(args) if args.command == "serve" else run_query(args)
    except (ModelFolderError, QueryError) as error:
        print(f"cbir {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
