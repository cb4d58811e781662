"""Every ``promptmoe ...`` command that the README, the book and ``promptmoe --help`` show a reader
names a real subcommand and real options, and its synthetic paths name real categories.

A reader copies these lines; a renamed flag or category left behind in prose is a command that
fails for them (``promptmoe evaluate --compat`` and ``unseen/ring`` once did).
"""
import json
import re
import shlex
from pathlib import Path

import pytest

from promptmoe.cli import EXAMPLES, build_parser
from promptmoe.data.synthetic import SEEN_CATEGORIES, UNSEEN_CATEGORIES

ROOT = Path(__file__).resolve().parents[1]


def _texts():
    yield "README.md", (ROOT / "README.md").read_text(encoding="utf-8")
    yield "promptmoe --help", EXAMPLES
    for path in sorted((ROOT / "book").glob("*.md")):
        yield path.name, path.read_text(encoding="utf-8")
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        yield path.name, "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def documented_commands():
    """(where, command line) for every backticked span or code line that runs ``promptmoe``."""
    found = []
    for where, text in _texts():
        # "promptmoe eval: warning: ..." is the program's output, not a command
        spans = re.findall(r"`([^`\n]*\bpromptmoe [a-z][a-z-]*(?:\s[^`\n]*)?)`", text)
        lines = [m.strip() for m in re.findall(r"^\s*((?:torchrun .*?-m )?promptmoe [a-z][a-z-]*(?:\s.*)?)$",
                                                 text, re.M)]
        for line in spans + lines:
            start = line.find("promptmoe ")
            if line[:start].strip() in ("", "torchrun") or line[:start].rstrip().endswith("-m"):
                found.append((where, line[start:]))
    return found


SUBPARSERS = next(a for a in build_parser()._actions if a.dest == "command").choices


def _tokens(command: str):
    command = command.split("#", 1)[0]  # a trailing shell comment
    try:
        return shlex.split(command)
    except ValueError:  # an unclosed quote in an excerpt
        return command.split()


def test_the_documents_show_commands_at_all():
    where = {w for w, _ in documented_commands()}
    assert {"README.md", "promptmoe --help"} <= where and len(documented_commands()) >= 10


@pytest.mark.parametrize("where, command", documented_commands())
def test_documented_command_names_real_subcommand_and_options(where, command):
    tokens = _tokens(command)
    sub = tokens[1]
    assert sub in SUBPARSERS, f"{where}: `{command}` names no subcommand {sub!r} ({', '.join(SUBPARSERS)})"
    options = set(SUBPARSERS[sub]._option_string_actions)
    for token in tokens[2:]:
        if re.fullmatch(r"--[a-z][a-z0-9-]*(=.*)?", token):
            flag = token.split("=", 1)[0]
            assert flag in options, f"{where}: `{command}`: {sub} has no option {flag}"
    for split, category in re.findall(r"synth/(seen|unseen)/([a-z_]+)", command):
        known = SEEN_CATEGORIES if split == "seen" else UNSEEN_CATEGORIES
        assert category in known, f"{where}: `{command}`: {category!r} is not a {split} synthetic category"


def test_the_check_catches_a_wrong_flag_and_a_wrong_category():
    with pytest.raises(AssertionError, match="no subcommand 'evaluate'"):
        test_documented_command_names_real_subcommand_and_options("x", "promptmoe evaluate --compat")
    with pytest.raises(AssertionError, match="no option --compat"):
        test_documented_command_names_real_subcommand_and_options("x", "promptmoe eval --compat")
    with pytest.raises(AssertionError, match="'ring' is not a unseen"):
        test_documented_command_names_real_subcommand_and_options("x", "promptmoe predict data/synth/unseen/ring/test")
