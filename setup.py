"""Build hook: a wheel carries the workflow (Snakefile, config/, workflow/, envs/, profiles/) inside
the package, copied from the project's top level at build time, so that `cbir index` works after a
plain `pip install .`. Everything else about the package is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# keep in step with cbir.pipeline.workflow_files.WORKFLOW_PARTS (a test checks that they agree)
WORKFLOW_PARTS = ("Snakefile", "config", "workflow", "envs", "profiles")
PACKAGED = Path("cbir", "pipeline", "workflow")


class BuildWithWorkflow(build_py):
    """build_py, plus the workflow's files copied under cbir/pipeline/workflow/ in the build."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads the checkout's own files
            return
        target = Path(self.build_lib) / PACKAGED
        shutil.rmtree(target, ignore_errors=True)
        for part in WORKFLOW_PARTS:
            source = HERE / part
            if source.is_dir():
                shutil.copytree(source, target / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / part)


setup(cmdclass={"build_py": BuildWithWorkflow})
