"""The commands the documentation shows are commands this version has: every `wsinuclei ...` line in the
README, BENCHMARKS.md and the user guides (code blocks and inline code) names a real subcommand, and each of
its `--options` is one that subcommand takes; every `scripts/NAME.py` and `make TARGET` they name exists. The
measurement history (docs/history/) keeps the commands as they were run and is left out."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").rglob("*.md"))]
DOCS = [p for p in DOCS if "history" not in p.relative_to(ROOT).parts]


def _commands(text: str) -> list[str]:
    """`wsinuclei ...` commands: lines of fenced blocks (continuations joined) and inline code spans."""
    out = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\s*\\\n\s*", " ", block)
        out += [line.strip() for line in joined.splitlines()]
    out += re.findall(r"`([^`\n]*wsinuclei [^`\n]*)`", re.sub(r"```.*?```", "", text, flags=re.S))
    cmds = []
    for line in out:
        line = line.split(" # ")[0].strip()
        for part in re.split(r"\s*(?:&&|;|\|)\s*", line):
            m = re.match(r"^(?:\$ )?(?:\S*/)?(wsinuclei(?:-dsa)?) (.*)$", part.strip())
            if m and m.group(1) == "wsinuclei":
                cmds.append(m.group(2))
    return cmds


def _options(parser) -> dict:
    import argparse

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {s for a in sp._actions for s in a.option_strings} for name, sp in sub.choices.items()}


def _problems(text: str) -> list[str]:
    from wsinuclei.cli import build_parser

    options = _options(build_parser())
    problems = []
    for cmd in _commands(text):
        try:
            words = shlex.split(cmd)
        except ValueError:
            words = cmd.split()
        if not words or words[0].startswith("-") or not re.match(r"^[a-z][a-z-]*$", words[0]):
            continue  # `wsinuclei --version`, or prose such as "wsinuclei's"
        if words[0] not in options:
            problems.append(f"unknown subcommand: wsinuclei {cmd}")
            continue
        for w in words[1:]:
            flag = w.split("=", 1)[0]
            if re.match(r"^--[a-z][a-z0-9-]*$", flag) and flag not in options[words[0]]:
                problems.append(f"wsinuclei {words[0]} has no {flag}: wsinuclei {cmd}")
    for script in set(re.findall(r"\bscripts/([A-Za-z0-9_]+\.(?:py|sh))", text)):
        if not (ROOT / "scripts" / script).is_file():
            problems.append(f"no scripts/{script}")
    make = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"`make ([a-z][a-z0-9-]*)`", text)):
        if not re.search(rf"^{re.escape(target)}:", make, flags=re.M):
            problems.append(f"no make target {target}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_commands_exist_with_their_options(doc):
    problems = _problems(doc.read_text())
    assert not problems, "\n".join(problems)


def test_the_checker_finds_commands_and_what_is_wrong_with_them():
    text = "```bash\nwsinuclei detect s.svs --out o \\\n    --roi 1,2,3,4   # a region\n```\nor `wsinuclei view o`"
    assert _commands(text) == ["detect s.svs --out o --roi 1,2,3,4", "view o"]
    bad = ("```bash\nwsinuclei detect s.svs --out o --no-such-flag\nwsinuclei frobnicate x\n"
           "python scripts/no_such_script.py\n```\n`make no-such-target`")
    assert _problems(text) == []
    assert sorted(_problems(bad)) == sorted(["wsinuclei detect has no --no-such-flag: wsinuclei detect s.svs --out o "
                                             "--no-such-flag", "unknown subcommand: wsinuclei frobnicate x",
                                             "no scripts/no_such_script.py", "no make target no-such-target"])


@pytest.mark.parametrize("doc", DOCS + [ROOT / "CHANGELOG.md", ROOT / "docs" / "history" / "measurements.md"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_that_exist(doc):
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor in the same file
        path = target.split("#", 1)[0]
        if path and not (doc.parent / path).exists():
            missing.append(target)
    assert not missing, missing
