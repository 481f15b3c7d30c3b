# Fine-tuning (a backbone entry with `finetune:`; docs, "Fine-tuning"): the paper's second transfer-learning
# strategy. Rule finetune trains the backbone on one split's training images (never its test images) into
# results/{dataset}/finetuned/{backbone}/{split}.safetensors. That split's features are then those of a network
# of its own, named "<backbone>__ft_<split>", which the sharded extraction, the engines (OpenVINO, int8) and the
# content-addressed feature cache handle as any backbone: its weights are a local file, keyed by its content, so
# another split or setting never reuses the wrong features. The grid's cells keep the backbone's name.

rule finetune:
    """The backbone fine-tuned on one split's training images, early-stopped on the validation part that
    validation draws from them; the weights (safetensors) and a record: the base weights, the settings, the
    training images' content hash and the metrics of every epoch. An interrupted training resumes from its last
    epoch's checkpoint."""
    input:
        manifest=MANIFEST,
        split=SPLIT,
    output:
        weights=FINETUNED,
        record=FINETUNE_RECORD,
    params:
        backbone=lambda wildcards: {k: v for k, v in config["backbones"][wildcards.backbone].items() if k != "finetune"},
        finetune=lambda wildcards: config["backbones"][wildcards.backbone]["finetune"],
        validation_fraction=config["validation"]["fraction"],
        device=config["extraction"]["device"],
        seed=SEED,
    log:
        f"{LOGS}/finetune/{{dataset}}_{{backbone}}_{{split}}.log",
    benchmark:
        f"{BENCHMARKS}/finetune/{{dataset}}_{{backbone}}_{{split}}.tsv"
    wildcard_constraints:
        backbone=one_of(FINETUNED_BACKBONES),
    threads: config["extraction"]["threads"]
    resources:
        gpu=extraction_gpus,
        mem_mb=lambda wildcards, attempt: attempt * 8000,
        runtime=24 * 60,
    conda:
        CONDA_ENV
    script:
        "../scripts/finetune.py"
