"""The command-line reference page, written from cbir's argument parsers (cbir.cli.build_parser)."""

from __future__ import annotations

import argparse
import functools

from cbir.cli import build_parser

PROG = "cbir"
# the usage lines are wrapped at a fixed width, not the terminal's, so that every build writes the same page
USAGE_FORMAT = functools.partial(argparse.HelpFormatter, width=100)


class UndocumentedError(ValueError):
    """An entry of the code (a flag, a config key) has no description for the reference."""


def flag_anchor(command: str, action: argparse.Action) -> str:
    """``cbir-index--labels`` for a flag, ``cbir-index-folder`` for a positional argument."""
    if action.option_strings:
        return f"{PROG}-{command}{action.option_strings[-1]}"
    return f"{PROG}-{command}-{(action.metavar or action.dest).lower()}"


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser by name, in the order ``cbir --help`` lists them."""
    parser = build_parser()
    (subparsers,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in subparsers.choices.values():
        command.formatter_class = USAGE_FORMAT
    return dict(subparsers.choices)


def arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The arguments a user passes (not --help)."""
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def _usage_form(action: argparse.Action) -> str:
    if not action.option_strings:
        return str(action.metavar or action.dest)
    form = ", ".join(action.option_strings)
    if action.nargs != 0:
        form += " " + str(action.metavar or action.dest.upper())
    return form


def _meaning(action: argparse.Action) -> str:
    text = " ".join(str(action.help).split())
    if action.choices is not None:
        text += " — one of " + ", ".join(f"`{choice}`" for choice in action.choices)
    shown_default = action.default not in (None, False, [], argparse.SUPPRESS) and "default" not in text
    if shown_default:
        text += f" (default `{action.default}`)"
    if action.required and action.nargs not in ("*", "?"):
        text += " (required)"
    if action.nargs in ("*", "+") or isinstance(action, argparse._AppendAction):
        text += " (repeatable)" if action.option_strings and "repeatable" not in text else ""
    return text.replace("|", "\\|")


def undocumented() -> list[str]:
    """Every argument without help text, as ``cbir <command> <flag>``."""
    return [
        f"{PROG} {name} {_usage_form(action)}"
        for name, parser in commands().items()
        for action in arguments(parser)
        if not (action.help or "").strip()
    ]


def page() -> str:
    missing = undocumented()
    if missing:
        raise UndocumentedError("arguments without help text in cbir.cli: " + ", ".join(missing))
    top = build_parser()
    top.formatter_class = USAGE_FORMAT
    lines = [
        "# Command line",
        "",
        "Every `cbir` command and argument, written from the argument parsers of `cbir.cli` when the site",
        "is built, so it says what the installed `cbir --help` says. A user's mistake (a missing file, an",
        "unknown id, a bad value) ends with one line saying what to do and exit status 2; `--verbose` shows",
        "the traceback too.",
        "",
        "```text",
        top.format_usage().strip(),
        "```",
        "",
    ]
    for name, parser in commands().items():
        lines += [f"## `{PROG} {name}` {{#{PROG}-{name}}}", "", " ".join((parser.description or "").split()), ""]
        lines += ["```text", parser.format_usage().strip(), "```", ""]
        lines += ["| argument | meaning |", "| --- | --- |"]
        for action in arguments(parser):
            anchor = flag_anchor(name, action)
            lines.append(f"| [](){{#{anchor}}}`{_usage_form(action)}` | {_meaning(action)} |")
        lines.append("")
    return "\n".join(lines)
