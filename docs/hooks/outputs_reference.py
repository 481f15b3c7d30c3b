"""The outputs reference page, written from the workflow's rules: what each rule writes, logs and measures."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("data", "extraction", "finetune", "fitting", "evaluation", "report")  # as the DAG runs


@dataclass(frozen=True)
class RuleOutputs:
    """One rule of the workflow: its file under workflow/rules/, what it does and the paths it writes."""

    name: str
    stage: str
    docstring: str
    outputs: tuple[tuple[str, str], ...]  # (name or "", path pattern without wildcard constraints)
    log: tuple[str, ...]
    benchmark: str


def _patterns(files) -> tuple[tuple[str, str], ...]:
    names = {index: name for name, (index, _end) in files._names.items()}
    return tuple((names.get(i, ""), strip(str(f))) for i, f in enumerate(files))


def rules(root: Path = ROOT) -> list[RuleOutputs]:
    """The workflow's rules that write files, as Snakemake parses the Snakefile with its default config."""
    from snakemake.api import SnakemakeApi  # imported here: snakemake is only needed when the site is built
    from snakemake.settings.types import OutputSettings, ResourceSettings

    here = Path.cwd()
    os.chdir(root)
    try:
        with contextlib.redirect_stdout(io.StringIO()), SnakemakeApi(OutputSettings()) as api:
            workflow = api.workflow(resource_settings=ResourceSettings(), snakefile=root / "Snakefile", workdir=root)
            parsed = workflow._workflow.rules  # the API has no public listing of a rule's outputs
            found = [
                RuleOutputs(
                    name=rule.name,
                    stage=Path(rule.snakefile).stem,
                    docstring=" ".join((rule.docstring or "").split()),
                    outputs=_patterns(rule.output),
                    log=tuple(strip(str(f)) for f in rule.log),
                    benchmark=strip(str(rule.benchmark)) if rule.benchmark else "",
                )
                for rule in parsed
                if len(rule.output)
            ]
    finally:
        os.chdir(here)
    return found


def strip(pattern: str) -> str:
    from snakemake.io import strip_wildcard_constraints

    return strip_wildcard_constraints(pattern)


def page(found: list[RuleOutputs] | None = None) -> str:
    found = rules() if found is None else found
    lines = [
        "# Outputs",
        "",
        "Every file the workflow writes, rule by rule, written from the rules of `workflow/rules/` when the",
        "site is built. `{dataset}`, `{backbone}`, `{split}`, `{pca}`, `{k}` and `{space}` are a grid cell's",
        "values; the paths are relative to the folder the workflow runs in. What each file holds, column by",
        "column, is in [Read the report](../how-to/read-the-report.md); the results tree is spelled out once,",
        "in `cbir.layout`.",
        "",
        "Each rule also writes its log and its Snakemake benchmark (wall time, memory): a rerun of a rule, a",
        "dataset or a cell rebuilds only the outputs older than their inputs, settings or code",
        "([Rerun part of the grid](../how-to/rerun-part-of-the-grid.md)).",
        "",
    ]
    found_stages = {rule.stage for rule in found}
    for stage in [s for s in STAGES if s in found_stages] + sorted(found_stages - set(STAGES)):
        lines += [f"## {stage.capitalize()} (`workflow/rules/{stage}.smk`)", ""]
        for rule in (r for r in found if r.stage == stage):
            lines += [f"### `{rule.name}` {{#rule-{rule.name}}}", "", rule.docstring or "(no description)", ""]
            lines += ["| output | path |", "| --- | --- |"]
            lines += [f"| {name or '—'} | `{path}` |" for name, path in rule.outputs]
            lines += [f"| log | `{path}` |" for path in rule.log]
            lines += [f"| benchmark | `{rule.benchmark}` |"] if rule.benchmark else []
            lines.append("")
    return "\n".join(lines)
