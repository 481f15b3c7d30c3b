"""Make the cbir package importable from rule scripts, installed or not (e.g. in a --sdm conda env)."""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("cbir") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
