import functools
import json
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

# The package holding the logic lives in src/; it is installed in the project's venv, and this
# makes it importable without installation too (rule scripts do the same in _package.py).
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from cbir.pipeline.config import ALL, ConfigError, load_schema, validate_config  # noqa: E402
from cbir.pipeline.grid import (  # noqa: E402
    class_sizes_bound,
    cluster_counts,
    dataset_is_labelled,
    max_train_images,
    dataset_root,
    downloads_dir,
    grid_cells,
    missing_datasets,
    pca_sizes,
)
from cbir.data.split import OFFICIAL  # noqa: E402
from cbir.fitting.spaces import SPACES  # noqa: E402
from cbir.layout import (  # noqa: E402
    BENCHMARKS,
    CELL,
    CHOSEN_PCA,
    CLASSIFIER,
    COPIES,
    DOWNLOAD_RECORD,
    DUPLICATES,
    EXCLUDED,
    FEATURE_TIMING,
    FEATURES,
    FILE_RECORDS,
    GALLERY,
    LOGS,
    MANIFEST,
    MONTAGE,
    PCA_BASIS,
    PREPARED_IMAGES,
    PROJECTION,
    SCAN_RECORDS,
    SELECTION,
    SPLIT,
    SUMMARY,
    SUMMARY_HTML,
    cell_folder,
    clusters_name,
    embedding_name,
    metrics_name,
    model_files,
)
from cbir.data.sources import get_source  # noqa: E402
from cbir.data.inspection import folder_state, scan_shard_count  # noqa: E402
from cbir.fitting.refit import WHEN_DUE, fitted_on, refit_due  # noqa: E402
from cbir.report.paper import summary_settings  # noqa: E402
from cbir.report.pages import PAGES, PLOTS, TABLES, page_files  # noqa: E402

try:
    config.update(validate_config(config, load_schema(Path(workflow.basedir) / "config" / "schema.yaml")))
except ConfigError as error:
    raise WorkflowError(str(error)) from None

_missing = missing_datasets(config)
if _missing:
    raise WorkflowError("missing dataset(s):\n  " + "\n  ".join(_missing))


wildcard_constraints:
    dataset=r"[A-Za-z0-9_]+",
    backbone=r"[A-Za-z0-9_]+",
    split=r"\d{1,2}-\d{1,2}|official|all",
    pca=r"\d+|original",
    k=r"\d+",


CONDA_ENV = "../../envs/cbir.yaml"
SEED = config["seed"]



def dataset_source(dataset):
    return config["datasets"][dataset]["source"]


def dataset_entry(dataset):
    return config["datasets"][dataset]


def adapter_options(wildcards):
    """The entry's keys that shape the manifest (not how_to_get, so rewording it rebuilds nothing)."""
    return {k: v for k, v in dataset_entry(wildcards.dataset).items() if k != "how_to_get"}


def dataset_user_folder(dataset):
    """The folder of the dataset's own files, where the user adds and changes them (Source.user_folder), or None."""
    entry = dataset_entry(dataset)
    return get_source(entry["source"]).user_folder(entry, dataset_root(config, dataset))


# asked by the manifest and by every scan job: the folder is listed once per run
@functools.cache
def dataset_folder_state(dataset):
    folder = dataset_user_folder(dataset)
    return folder_state(folder) if folder else None


def dataset_files_state(wildcards):
    """A digest of the names, sizes and mtimes of the dataset's own files (None for other sources)."""
    state = dataset_folder_state(wildcards.dataset)
    return state.digest if state else None


def scan_records(wildcards):
    """The records of the scan jobs inspecting a large folder dataset in shards (none for a small one)."""
    state = dataset_folder_state(wildcards.dataset)
    n = scan_shard_count(state.n_files, config["data"]["scan_shard_size"]) if state else 0
    return [SCAN_RECORDS.format(dataset=wildcards.dataset, shard=i, n=n) for i in range(n)]


def download_input(wildcards):
    """A dataset with a url depends on its download record; one without is read where it is."""
    if dataset_entry(wildcards.dataset).get("url"):
        return DOWNLOAD_RECORD.format(dataset=wildcards.dataset)
    return []


def manifest_input(wildcards):
    """What the manifest is built from: the folder written by the rule the source names as ``prepared_by``
    (generated digits, CIFAR-10's PNGs), or the dataset's (downloaded) files."""
    prepared_by = get_source(dataset_source(wildcards.dataset)).prepared_by
    if prepared_by:
        return getattr(rules, prepared_by).output.folder.format(dataset=wildcards.dataset)
    return download_input(wildcards)


def pca_basis_size(wildcards):
    """The basis is fitted once at the grid's largest PCA size; smaller sizes are slices of it."""
    return max(pca_sizes(config))


def basis_input(wildcards):
    if wildcards.pca == "original":
        return []
    return PCA_BASIS.format(**wildcards)


def metrics_files(cells=None):
    """The paper's space's metrics of ``cells`` (default: every cell of the grid)."""
    cells = grid_cells(config) if cells is None else cells
    return [f"{cell_folder(c.dataset, c.backbone, c.split, c.pca)}/{metrics_name(c.k)}" for c in cells]


# every fitting job of a split asks: the dataset's folder is listed once per run, not once per job
@functools.cache
def counted_training_set(dataset, split):
    """(training images, classes) of a cell's split, counted from the dataset's files; None where unknown."""
    bound = class_sizes_bound(config, dataset, split == OFFICIAL)
    if bound is None:
        return None
    sizes = [n for n in bound[0] if n > 0]
    return max_train_images(sizes, split), len(sizes)


def kept_until_due(path, artifact, dataset=None):
    """An input (a path pattern, or a function of the wildcards) of the step fitting ``artifact``, marked ancient while update.refit is when_due and no refit
    is due (cbir.fitting.refit), so that a changed input does not refit the kept model. ``dataset``: for a
    rule of one dataset, whose paths name it rather than take it as a wildcard."""

    def kept(wildcards):
        values = {**wildcards, **({"dataset": dataset} if dataset else {})}
        target = path(values) if callable(path) else path.format(**values)
        return kept_input(target, artifact.format(**values), values)

    return kept


def kept_input(target, artifact, values):
    update = config["update"]
    # a ratio split reshuffles a class whose images change: a kept model could have been fitted on an
    # image now held out, so only the splits that keep every image where it was (all, official) keep models
    if update["refit"] != WHEN_DUE or values["split"] not in (ALL, OFFICIAL):
        return target
    training_set = counted_training_set(values["dataset"], values["split"])
    if refit_due(fitted_on(artifact), training_set, update["refit_after"]):
        return target
    return ancient(target)


def classifier_input(wildcards):
    """The cell's MLP; a collection without labels has none (every image in its one class)."""
    return f"{CELL}/{CLASSIFIER}".format(**wildcards) if dataset_is_labelled(config, wildcards.dataset) else []


# the embedding spaces beyond the paper's (raw is the cell's gallery itself), fitted per cell of a
# labelled dataset; a collection without labels gets those that need none (l2, whiten ...), and
# validation picks among them by how well changed copies of its photos find them
EXTRA_SPACES = [space for space in config["grid"]["embeddings"] if space != "raw"]
LABEL_FREE_SPACES = [space for space in EXTRA_SPACES if not SPACES[space].uses_labels]
LABELLED = [d for d in config["grid"]["datasets"] if dataset_is_labelled(config, d)]
COLLECTIONS = [d for d in config["grid"]["datasets"] if not dataset_is_labelled(config, d)]


def one_of(names):
    """A wildcard pattern matching exactly these names (none when empty)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


def copies_input(wildcards):
    """A collection's changed copies, and the cell's projection to bring them into its space (labelled: none)."""
    if dataset_is_labelled(config, wildcards.dataset) or not (config["validation"]["copies"] and LABEL_FREE_SPACES):
        return {}
    return {"copies": COPIES.format(**wildcards), "projection": f"{CELL}/{PROJECTION}".format(**wildcards)}


def collection_space_files():
    """The label-free spaces of every cell of a collection, with their clusters (rule fit_collection_spaces_*)."""
    return [
        f"{cell_folder(c.dataset, c.backbone, c.split, c.pca)}/{name}"
        for c in grid_cells(config)
        if not dataset_is_labelled(config, c.dataset)
        for space in LABEL_FREE_SPACES
        for name in (embedding_name(space), clusters_name(c.k, space))
    ]


def space_metrics_files(cells=None):
    """The further spaces' metrics of ``cells`` of labelled datasets (default: every cell of the grid)."""
    return [
        f"{cell_folder(c.dataset, c.backbone, c.split, c.pca)}/{metrics_name(c.k, space)}"
        for c in (grid_cells(config) if cells is None else cells)
        if dataset_is_labelled(config, c.dataset)
        for space in EXTRA_SPACES
    ]


SUMMARY_TABLES = list(TABLES)
SUMMARY_PLOTS = list(PLOTS)
# the summary's tables, each split's as CSV and as Markdown: (table, split, ext)
SUMMARY_TABLE_FILES = [(t, s, ext) for t in SUMMARY_TABLES for s in config["grid"]["splits"] for ext in ("csv", "md")]


def summary_page_outputs():
    """The report's pages (cbir.report.pages.PAGES): one named output per page, so that each gets its category and
    caption (workflow/report/<page>.rst); HTML under results/summary/html/, Markdown beside the tables.

    Returns the outputs and what each of their files is: output name -> [(page, split or "", ext)].
    """
    outputs, files = {}, {}
    for page, split, ext in page_files(config["grid"]["splits"]):
        name = page + (f"_{split}" if split else "")
        if ext == "html":
            output = f"page_{page}"
            path = report(f"{SUMMARY_HTML}/{name}.html", caption=f"../report/{page}.rst", category=PAGES[page].category)
        else:
            output, path = f"page_{page}_md", f"{SUMMARY}/{name}.md"
        outputs.setdefault(output, []).append(path)
        files.setdefault(output, []).append((page, split, ext))
    return outputs, files


SUMMARY_PAGES, SUMMARY_PAGE_FILES = summary_page_outputs()


def montage_split_and_pca():
    """The grid cell shown in the montages: 80-20 and PCA 100 where the grid has them."""
    grid = config["grid"]
    split = "80-20" if "80-20" in grid["splits"] else grid["splits"][0]
    pca = "100" if 100 in grid["pca"] else str(grid["pca"][0])
    return split, pca


def measures_chosen_only(dataset):
    """grid.measure chosen, for a labelled dataset: only the PCA size validation chose is fitted further and tested."""
    return config["grid"]["measure"] == "chosen" and dataset_is_labelled(config, dataset)


def chosen_pca(dataset, backbone, split):
    """The PCA size validation chose for the split (checkpoint choose_pca: known once the cells' selections are)."""
    chosen = checkpoints.choose_pca.get(dataset=dataset, backbone=backbone, split=split).output.chosen
    with open(chosen) as f:
        return str(json.load(f)["pca"])


def montage_cell(wildcards):
    split, pca = montage_split_and_pca()
    if measures_chosen_only(wildcards.dataset):
        pca = chosen_pca(wildcards.dataset, wildcards.backbone, split)
    return cell_folder(wildcards.dataset, wildcards.backbone, split, pca)


def measured_metrics_files(wildcards):
    """What the target all_but_summary measures: each cell's metrics in every space, or with grid.measure chosen,
    those of the PCA size validation chose per labelled dataset, backbone and split."""
    measured = [
        c
        for c in grid_cells(config)
        if not measures_chosen_only(c.dataset) or str(c.pca) == chosen_pca(c.dataset, c.backbone, c.split)
    ]
    return metrics_files(measured) + space_metrics_files(measured)


def montage_split(wildcards):
    return SPLIT.format(dataset=wildcards.dataset, split=montage_split_and_pca()[0])


def montage_outputs():
    """The montages (labelled datasets: they mark each result right or wrong)."""
    grid = config["grid"]
    labelled = [dataset for dataset in grid["datasets"] if dataset_is_labelled(config, dataset)]
    return expand(MONTAGE, dataset=labelled, backbone=grid["backbones"])


def retrieval_settings(*keys):
    """Only the retrieval settings that a job reads, so that changing any other one does not rerun it."""
    return {key: config["retrieval"][key] for key in keys}


# Fine-tuned backbones (workflow/rules/finetune.smk): each split's features come from a network of
# its own, "<backbone>__ft_<split>", extracted as any backbone with the fine-tuned weights file.
FINETUNED = "results/{dataset}/finetuned/{backbone}/{split}.safetensors"
FINETUNE_RECORD = "results/{dataset}/finetuned/{backbone}/{split}.json"
FINETUNED_BACKBONES = [name for name, entry in config["backbones"].items() if entry.get("finetune")]
FINETUNED_NETWORK = re.compile(r"(?P<backbone>[A-Za-z0-9_]+?)__ft_(?P<split>\d{1,2}_\d{1,2}|official|all)")


def network_name(backbone, split):
    """The network whose features a cell of ``backbone`` at ``split`` reads: the backbone's own, or for a
    fine-tuned backbone the one fine-tuned on that split."""
    return f"{backbone}__ft_{split.replace('-', '_')}" if backbone in FINETUNED_BACKBONES else backbone


def fine_tuned_on(network):
    """(backbone, split) of a fine-tuned network's name; None for a backbone of the catalogue."""
    match = FINETUNED_NETWORK.fullmatch(network)
    if network in config["backbones"] or match is None:
        return None
    return match["backbone"], match["split"].replace("_", "-")


def network_entry(wildcards):
    """The backbone entry a network extracts with: the catalogue's, or its fine-tuned weights file."""
    tuned = fine_tuned_on(wildcards.backbone)
    if tuned is None:
        return config["backbones"][wildcards.backbone]
    backbone, split = tuned
    entry = {key: value for key, value in config["backbones"][backbone].items() if key != "finetune"}
    return {**entry, "weights": FINETUNED.format(dataset=wildcards.dataset, backbone=backbone, split=split)}


def finetuned_input(wildcards):
    """The fine-tuned weights a network extracts with (none for a backbone of the catalogue)."""
    tuned = fine_tuned_on(wildcards.backbone)
    return [] if tuned is None else FINETUNED.format(dataset=wildcards.dataset, backbone=tuned[0], split=tuned[1])


def cell_features(wildcards):
    """The feature file a grid cell reads."""
    return FEATURES.format(dataset=wildcards["dataset"], backbone=network_name(wildcards["backbone"], wildcards["split"]))


def backbone_features(wildcards):
    """A dataset and backbone's feature file for the steps that need one network (the query latency, the
    changed copies): for a fine-tuned backbone, the grid's first split's."""
    return FEATURES.format(dataset=wildcards.dataset, backbone=network_name(wildcards.backbone, config["grid"]["splits"][0]))


def networks():
    """Every (dataset, network) the grid extracts with."""
    grid = config["grid"]
    return sorted({(d, network_name(b, s)) for d in grid["datasets"] for b in grid["backbones"] for s in grid["splits"]})
