"""The conda environment for --sdm conda pins what requirements.txt pins."""

import re

import yaml

from helpers import REPO


def pinned(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)==([^\s#]+)\s*(#.*)?", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_conda_env_matches_pip_requirements():
    requirements = pinned((REPO / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((REPO / "envs" / "cbir.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert pinned(pip_section) == requirements
    assert len(requirements) >= 10


def test_every_rule_uses_the_conda_env_and_declares_a_log():
    rules_dir = REPO / "workflow" / "rules"
    for path in rules_dir.glob("*.smk"):
        text = path.read_text()
        rules = re.findall(r"^rule (\w+):", text, flags=re.M)
        for name in rules:
            body = text.split(f"rule {name}:", 1)[1].split("\nrule ", 1)[0]
            assert "conda:" in body and "log:" in body and "resources:" in body, (path.name, name)
