"""Where the workflow's files are: the copy a wheel ships inside the package, or the checkout's.

The project's top level (``Snakefile``, ``config/``, ``workflow/``, ``envs/``, ``profiles/``) is the
workflow. Building a wheel copies it into ``cbir/pipeline/workflow/`` (``setup.py``), so that
``cbir index`` runs after a plain ``pip install``; in a checkout (or an editable install) the
files are read where they are, so there is never a second copy to keep in step by hand.
"""

from __future__ import annotations

from pathlib import Path

# the top-level files and folders that make the workflow, copied into a wheel by setup.py
WORKFLOW_PARTS = ("Snakefile", "config", "workflow", "envs", "profiles")
PACKAGED = Path(__file__).resolve().parent / "workflow"
CHECKOUT = Path(__file__).resolve().parents[3]


class WorkflowMissingError(RuntimeError):
    """Neither a packaged copy of the workflow nor a checkout's is there."""


def workflow_dir() -> Path:
    """The folder holding the Snakefile and config/: the wheel's copy, else the checkout's."""
    for folder in (PACKAGED, CHECKOUT):
        if (folder / "Snakefile").is_file() and (folder / "config" / "config.yaml").is_file():
            return folder
    raise WorkflowMissingError(
        f"the workflow's Snakefile is neither in the installed package ('{PACKAGED}') nor in a checkout "
        f"('{CHECKOUT}'): reinstall cbir from a wheel or a source distribution built from the project "
        "(pip install .), which ship the workflow"
    )


def snakefile() -> Path:
    return workflow_dir() / "Snakefile"


def default_config() -> Path:
    """The embedded default config (config/config.yaml), the base of every ``cbir index`` run."""
    return workflow_dir() / "config" / "config.yaml"
