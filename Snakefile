# cbir: content-based image retrieval with CNN codes, PCA, intra-class k-means and an MLP.
#
#   snakemake --cores 2                                  # the embedded default (offline)
#   snakemake --cores 8 --configfile config/paper.yaml   # the paper's grid
#
# dataset -> manifest -> split -> features (HDF5, once per dataset and backbone)
#         -> PCA(n) -> k-means per class -> MLP -> evaluation -> summary

import os

from snakemake.utils import min_version

min_version("9.0")


# Resolved against the workflow, not the working directory, so `--directory` runs find it;
# a --configfile given on the command line is merged over it.
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/resources.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/extraction.smk"
include: "workflow/rules/fitting.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        rules.summarize.output,
        montage_outputs(),
        collection_space_files(),
        shard_plans(),
    default_target: True


rule all_but_summary:
    """What `all` builds but the summary, which every dataset of the folder shares: `cbir index` builds this, so
    that collections indexed side by side in one folder write no file in common; with grid.measure chosen (cbir
    index), only the cells of the PCA sizes validation chose are measured."""
    input:
        measured_metrics_files,
        rules.summarize.input.manifests,
        rules.summarize.input.excluded,
        rules.summarize.input.duplicates,
        montage_outputs(),
        collection_space_files(),
        shard_plans(),
