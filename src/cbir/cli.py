"""The ``cbir`` command line: index a folder of photos, query a trained grid cell with your own images, serve it as
a web page, or list the duplicate and near-duplicate images of an indexed dataset.

Whatever stops a command is one line, ``cbir <command>: error: ...``, and exit status 2; ``--verbose``
adds the traceback (and shows ``cbir index``'s full log as it runs).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cbir.api import feedback_from_ids
from cbir.pipeline.index_folder import PHOTO_BACKBONE, FolderIndexError, IndexRunError, describe, plan_index
from cbir.pipeline.index_folder import run_index as run_workflow
from cbir.pipeline.progress import shown
from cbir.report import montage
from cbir.search.answer import NEAREST_CLUSTER_TITLE, FileAnswer, format_table
from cbir.search.cell import BEST, Cell, ModelFolderError, load_cell
from cbir.search.duplicates import (
    DEFAULT_THRESHOLD,
    DuplicatesError,
    check_threshold,
    find_duplicates,
    load_index,
    report,
    summary,
    write_csv,
    write_json,
)
from cbir.search.feedback import MAX_MARKS
from cbir.search.index import MODE_TITLES, MODES
from cbir.search.query import (
    Embedder,
    Feedback,
    QueryError,
    answer_features,
    answer_gallery_image,
    collect_query_paths,
    describe_space,
    query_images,
)
from cbir.search.refine import UnknownIdsError, gallery_rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cbir", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    query = commands.add_parser(
        "query",
        help="retrieve the most similar gallery images for query images",
        description="Predict the class of each query image and list its top-k most similar training images; "
        "or, with --id, those of a gallery image ('more like this'); --relevant and --irrelevant refine the ranking "
        "with the results marked so far (relevance feedback).",
    )
    query.add_argument("images", nargs="*", metavar="PHOTO", help="image files or folders of images")
    query.add_argument("--id", dest="gallery_id", metavar="GALLERY_ID",
                       help="a gallery image (a result's id) as the query instead of photos: 'more like this', "
                       "itself left out of its results")  # fmt: skip
    for option, meaning in (("relevant", "relevant"), ("irrelevant", "not relevant")):
        query.add_argument(f"--{option}", action="append", metavar="ID,...",
                           help=f"gallery images (results' ids) marked {meaning}: comma-separated, repeatable; the "
                           f"ranking learns from the marks (at most {MAX_MARKS} in all, one query)")  # fmt: skip
    add_model_arguments(query)
    query.add_argument("--top-k", type=int, default=5, help="results per query (default 5)")
    query.add_argument("--mode", choices=[*MODES, "all"], default="all", help="retrieval mode (default all)")
    query.add_argument("--json", action="store_true", help="print JSON instead of a table")
    query.add_argument("--montage", metavar="PNG", help="also draw the queries and their results into this image")
    add_serve_parser(commands)
    add_duplicates_parser(commands)
    add_index_parser(commands)
    for command in commands.choices.values():
        command.add_argument(
            "--verbose", action="store_true", help="on an error, show its traceback too (cbir index: its full log)"
        )
    return parser


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The grid cell to load and how to run it: shared by query and serve."""
    parser.add_argument("--model", required=True, help="a grid cell: results/<dataset>/<backbone>/<split>/<pca>/")
    parser.add_argument("--k", type=int, default=None, help="clusters per class (default: the smallest available)")
    parser.add_argument("--metric", choices=["euclidean", "cosine"], default="euclidean",
                        help="distance to rank by: euclidean (default) or cosine (retrieval.metric)")  # fmt: skip
    parser.add_argument("--space", default=BEST,
                        help="embedding space to search in: raw (the paper's PCA features), a space the cell was "
                        "fitted in (grid.embeddings), or best: the one validation chose inside the training split "
                        "(default)")  # fmt: skip
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
    serve.add_argument("--max-upload-mb", type=float, default=64.0, help="largest accepted upload in MB (default 64)")
    serve.add_argument("--max-pixels", type=int, default=40_000_000, help="largest accepted image in pixels")
    serve.add_argument("--threads", type=int, default=None, help="CPU threads of the CNN forward (default: torch's)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                       help="the server's log: one line per request at info (default info)")  # fmt: skip
    serve.add_argument(
        "--token",
        default=None,
        help="every request then needs 'Authorization: Bearer <token>' or a login at /login; required off "
        "loopback. Prefer the CBIR_TOKEN environment variable: an argument shows in the process list",
    )
    serve.add_argument("--max-concurrent", type=int, default=32,
                       help="requests in progress per worker; more get 503 + Retry-After (default 32)")  # fmt: skip
    serve.add_argument("--upload-timeout", type=float, default=30.0,
                       help="seconds for a request body to arrive, else 408 (default 30)")  # fmt: skip
    serve.add_argument("--workers", type=int, default=1, help="server processes, each with the model (default 1)")
    serve.add_argument("--reload-interval", type=float, default=10.0,
                       help="seconds between checks for a rewritten cell, 0: only on SIGHUP (default 10)")  # fmt: skip


def add_duplicates_parser(commands: argparse._SubParsersAction) -> None:
    duplicates = commands.add_parser(
        "duplicates",
        help="groups of identical files and of near-duplicate images in an indexed dataset",
        description="Find exact duplicates (same SHA-256 in the manifest) and near-duplicates (cosine distance of "
        "the backbone features below a threshold), grouped as connected components.",
    )
    duplicates.add_argument(
        "index",
        metavar="INDEX",
        help="a feature file results/<dataset>/features/<backbone>.h5, or a grid cell "
        "results/<dataset>/<backbone>/<split>/<pca>/ (then its dataset's feature file)",
    )
    duplicates.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                            help=f"cosine distance below which images are near-duplicates, 0 to 2; 0: exact "
                            f"duplicates only (default {DEFAULT_THRESHOLD}, calibrated: see the docs)")  # fmt: skip
    duplicates.add_argument("--csv", metavar="FILE", help="write the groups as CSV, one row per image")
    duplicates.add_argument("--json", metavar="FILE", help="write the groups as JSON ('-': stdout, summary on stderr)")
    duplicates.add_argument("--montage", metavar="PNG", help="draw the largest groups into this image")
    duplicates.add_argument("--montage-groups", type=int, default=8, help="groups in the montage (default 8)")


def add_index_parser(commands: argparse._SubParsersAction) -> None:
    index = commands.add_parser(
        "index",
        help="index a folder of photos (with or without labels) for query, serve and duplicates",
        description="Write a config for FOLDER, run the workflow on it (Snakemake: one line per stage here, its "
        "full log in results/<name>/index.log) and print the folders to pass to cbir query, serve and duplicates. "
        "Run it again after adding photos: only the new ones are extracted.",
    )
    index.add_argument("folder", metavar="FOLDER", help="the photos: any layout, or one sub-folder per class")
    index.add_argument("--name", help="the dataset's name under results/ (default: the folder's name)")
    index.add_argument("--backbone", default=PHOTO_BACKBONE,
                       help=f"a backbone of config/config.yaml's catalogue (default {PHOTO_BACKBONE}: photos at "
                       "260 px; efficientnet_lite0 is about 3x faster at 128 px, for a quick look)")  # fmt: skip
    index.add_argument("--labels", choices=["auto", "none", "folders"], default="auto",
                       help="folders: one sub-folder per class; none: no labels; auto (default): folders when "
                       "every photo sits in one of two or more sub-folders and none of them is named like a "
                       "date, a camera or a library step (2024, DCIM, Export...)")  # fmt: skip
    index.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="CPU cores to use (default: all)")
    index.add_argument("--workdir", default=".", help="where results/ is written (default: here)")
    index.add_argument("--engine", choices=["auto", "torch", "openvino"], default=None,
                       help="extraction engine (default: config/config.yaml's, auto)")  # fmt: skip
    index.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16", "int8"], default=None,
                       help="extraction precision (default: config/config.yaml's, auto)")  # fmt: skip
    index.add_argument("--max-excluded-fraction", type=float, default=None, metavar="SHARE",
                       help="largest share of the files that may be unusable (not images, unreadable, too small) "
                       "before the run stops (default: data.max_excluded_fraction of config/config.yaml)")  # fmt: skip
    index.add_argument("--ignore", action="append", default=[], metavar="PATTERN",
                       help="leave out files or folders matching this glob (data.ignore: a name such as '*.tmp', "
                       "a path inside the folder with '/', a folder with a trailing '/'); repeatable")  # fmt: skip


def run_index(args: argparse.Namespace) -> int:
    if args.cores < 1:
        raise QueryError("--cores must be at least 1")
    if args.max_excluded_fraction is not None and not 0 <= args.max_excluded_fraction <= 1:
        raise QueryError("--max-excluded-fraction must be between 0 and 1")
    plan = plan_index(args.folder, name=args.name, labels=args.labels, backbone=args.backbone)
    workdir = Path(args.workdir).resolve()
    labels = plan.labels_reason or f"labels: {plan.labels}"  # why these labels (cbir.pipeline.labels)
    print(f"cbir index: {plan.n_images} image file(s) in '{plan.folder}', {labels}", file=sys.stderr)
    extraction = {key: value for key, value in (("engine", args.engine), ("precision", args.precision)) if value}
    data: dict[str, Any] = {"ignore": args.ignore} if args.ignore else {}
    if args.max_excluded_fraction is not None:
        data["max_excluded_fraction"] = args.max_excluded_fraction
    done = run_workflow(plan, workdir, args.cores, extraction, data=data, verbose=args.verbose)
    print(f"cbir index: {done}; the full log: {shown(workdir / plan.log)}", file=sys.stderr)
    print(describe(plan, workdir))
    return 0


def run_duplicates(args: argparse.Namespace) -> int:
    threshold = check_threshold(args.threshold)
    if args.montage_groups < 1:
        raise QueryError("--montage-groups must be at least 1")
    index = load_index(args.index)
    groups, exact = find_duplicates(index, threshold)
    payload = report(index, groups, exact, threshold)
    try:
        if args.csv:
            write_csv(payload["groups"], args.csv)
        if args.json == "-":
            print(json.dumps(payload, indent=2))
        elif args.json:
            write_json(payload, args.json)
        if args.montage:
            montage.draw_groups(payload["groups"], index.root, args.montage, max_groups=args.montage_groups)
    except OSError as error:  # an output folder that is missing or not writable
        raise DuplicatesError(f"cannot write the results: {error}") from error
    print(summary(payload), file=sys.stderr if args.json == "-" else sys.stdout)
    return 0


def run_query(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise QueryError("--top-k must be at least 1")
    if bool(args.images) == (args.gallery_id is not None):
        raise QueryError("give either query photos or --id GALLERY_ID (a gallery image as the query)")
    modes = MODES if args.mode == "all" else (args.mode,)
    model = load_cell(args.model, k=args.k, metric=args.metric, space=args.space)
    print(f"cbir query: {describe_space(model)}", file=sys.stderr)
    feedback = query_feedback(model, args)
    if args.gallery_id is not None:  # "more like this": no photo to read, no network to load
        answer = answer_gallery_image(model, args.gallery_id, args.top_k, modes, feedback=feedback)
        answers = [FileAnswer(Path(args.gallery_id), answer)]
    else:
        embedder = Embedder(model.record, args.device, model.root)
        if embedder.notice:
            print(f"cbir query: note: {embedder.notice}", file=sys.stderr)
        if feedback is None:
            answers = query_images(model, args.images, top_k=args.top_k, modes=modes, embedder=embedder)
        else:
            answers = refined_answers(model, embedder, args.images, args.top_k, modes, feedback)
    print(json.dumps([answer.to_json() for answer in answers], indent=2) if args.json else format_table(answers))
    if args.montage:
        shown = [answer.to_json() for answer in answers if answer.answer is not None]
        if args.gallery_id is not None:  # the query drawn from its file, as the results are
            [row] = gallery_rows(model, [args.gallery_id])
            shown = [{**found, "query": str(model.gallery_paths[row])} for found in shown]
        if shown:
            titles = {m: MODE_TITLES[m].short for m in modes}
            if not model.labelled:  # no class: the clustered search probes the nearest of all clusters
                titles["clustered"] = NEAREST_CLUSTER_TITLE
            montage.draw_montage(shown, args.montage, titles)
    return 1 if any(answer.answer is None for answer in answers) else 0


def marked_ids(model: Cell, values: Sequence[str] | None) -> list[str]:
    """The ids of ``--relevant`` or ``--irrelevant`` (comma-separated, the option repeatable); a value that is a
    gallery id as a whole (a file name with a comma) is kept whole."""
    ids: list[str] = []
    known: set[str] | None = None
    for value in values or []:
        if "," in value:
            known = known if known is not None else {str(image_id) for image_id in model.gallery_ids}
            ids.extend([value] if value in known else [part.strip() for part in value.split(",") if part.strip()])
        elif value.strip():
            ids.append(value.strip())
    return ids


def query_feedback(model: Cell, args: argparse.Namespace) -> Feedback | None:
    """The round of marks to refine with (None without marks); an unknown id of --id, --relevant or --irrelevant
    is refused with a message that names the option and the ids."""
    try:
        if args.gallery_id is not None:
            gallery_rows(model, [args.gallery_id], "--id")
        return feedback_from_ids(model, marked_ids(model, args.relevant), marked_ids(model, args.irrelevant))
    except UnknownIdsError as error:  # named by the option, not by the API's field
        option = {"relevant_ids": "--relevant", "irrelevant_ids": "--irrelevant"}.get(error.field, error.field)
        raise QueryError(option + str(error)[len(error.field) :]) from error


def refined_answers(model: Cell, embedder: Embedder, photos: Sequence[str], top_k: int, modes: Sequence[str],
                    feedback: Feedback) -> list[FileAnswer]:  # fmt: skip
    """The answer for one photo after a round of marks (marks refine one query, not a folder of them)."""
    paths = collect_query_paths(photos)
    if len(paths) != 1:
        raise QueryError(f"--relevant and --irrelevant refine one query: give one photo (or --id), not {len(paths)}")
    features, errors = embedder.embed_paths(paths)
    if errors[0] is not None:
        return [FileAnswer(paths[0], None, errors[0])]
    [answer] = answer_features(model, features, top_k, modes, feedback=feedback)
    return [FileAnswer(paths[0], answer)]


def run_serve(args: argparse.Namespace) -> int:
    # only here: the server's imports (fastapi, uvicorn, the web app) are start-up cost the other commands skip
    from cbir.serve.app import create_app
    from cbir.serve.auth import TOKEN_ENV, token_problem
    from cbir.serve.run import run_server
    from cbir.serve.settings import MAX_TOP_K, ServeSettings

    token = args.token if args.token is not None else (os.environ.get(TOKEN_ENV) or None)
    problem = token_problem(args.host, token)
    if problem:
        raise QueryError(problem)
    if not 1 <= args.top_k <= MAX_TOP_K:
        raise QueryError(f"--top-k must be between 1 and {MAX_TOP_K}")
    if args.max_upload_mb <= 0 or args.max_pixels <= 0 or (args.threads is not None and args.threads < 1):
        raise QueryError("--max-upload-mb, --max-pixels and --threads must be positive")
    if args.max_concurrent < 1 or args.workers < 1 or args.upload_timeout <= 0 or args.reload_interval < 0:
        raise QueryError("--max-concurrent, --workers and --upload-timeout must be positive, --reload-interval >= 0")
    problem = listen_problem(args.host, args.port)  # before the model is loaded: that takes a while
    if problem:
        raise QueryError(problem)
    settings = ServeSettings(
        model=Path(args.model),
        k=args.k,
        top_k=args.top_k,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_pixels=args.max_pixels,
        device=args.device,
        metric=args.metric,
        space=args.space,
        threads=args.threads,
        max_concurrent=args.max_concurrent,
        upload_timeout=args.upload_timeout,
        reload_interval=args.reload_interval,
        token=token,
    )
    if args.workers == 1:
        target: object = create_app(settings)
    else:
        # a bad folder fails here, not in a worker
        load_cell(settings.model, k=settings.k, metric=settings.metric, space=settings.space)
        target = settings
    access = "token required" if token else "no token"
    print(f"cbir serve: http://{args.host}:{args.port}/ ({access}, {args.workers} worker(s); API schema at /docs)",
          file=sys.stderr)  # fmt: skip
    run_server(target, args.host, args.port, args.log_level, workers=args.workers)  # type: ignore[arg-type]
    return 0


def listen_problem(host: str, port: int) -> str | None:
    """Why ``cbir serve`` could not listen on host:port (a port in use, an address not of this machine), or None."""
    if not 0 <= port <= 65535:
        return f"--port must be between 0 and 65535, not {port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as error:
        return f"--host '{host}' is not an address this machine can listen on ({error})"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is in use (another cbir serve?): choose another with --port"
            return f"cannot listen on {host}:{port}: {error.strerror or error}"
    return None


KNOWN_ERRORS = (ModelFolderError, QueryError, DuplicatesError, FolderIndexError)


def error_line(error: BaseException) -> str:
    """An error as one message: cbir's own errors are worded for the user; a file error names the file."""
    if isinstance(error, KNOWN_ERRORS):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: '{error.filename}'" if error.filename else error.strerror
    return f"{type(error).__name__}: {error} (unexpected: --verbose shows where it happened)"


def report_error(command: str, error: BaseException, verbose: bool) -> None:
    """``cbir <command>: error: ...`` (with ``verbose``, the traceback before it); for a failed ``cbir index``
    run, the logs to read."""
    if verbose:
        traceback.print_exception(error, file=sys.stderr)
    print(f"cbir {command}: error: {error_line(error)}", file=sys.stderr)
    if isinstance(error, IndexRunError):
        step = f"the failed step's log: {shown(error.job_log)}; " if error.job_log else ""
        hint = "" if verbose else " (--verbose shows it as it runs)"
        print(f"cbir {command}: {step}the full log: {shown(error.log)}{hint}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"query": run_query, "serve": run_serve, "duplicates": run_duplicates, "index": run_index}
    try:
        return commands[args.command](args)
    except Exception as error:  # every error is one line (the traceback with --verbose)
        report_error(args.command, error, args.verbose)
        return 2


if __name__ == "__main__":
    sys.exit(main())
