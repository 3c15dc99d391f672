"""Every ``python run_benchmark.py ...`` command in README.md and docs/*.md parses with the real parser.

Commands are taken from fenced code blocks (with ``\\`` continuations joined) and from inline code
spans (which may wrap over lines); shell comments, pipes, ``&&``, ``;`` and redirections are cut
off, and each command is parsed by ``benchmark.cli.main`` itself, stopped right after its
``parse_args``: so the default ``run`` is inserted exactly as ``main`` inserts it, and an unknown
option or an invalid choice is the parser's one-line error, reported with the doc's file:line.
Placeholders (``R``, ``DIR``, ``my.yaml``) parse like any string; nothing is run.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from benchmark import cli

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAM = "python run_benchmark.py"
SEPARATORS = {"|", "||", "&&", ";", "&"}
# a redirection starting a word: `> out`, `>> log`, `2>&1`, `< in`, `&> all`
REDIRECTION = re.compile(r"(?<!\S)\d*(?:&>|>>|>&|>|<)\s*\S+")
COMMENT = re.compile(r"(?:^|\s)#.*$")  # `#` starting a word, as the shell reads it


def commands_in(text: str) -> list[tuple[int, str]]:
    """(line number, command text from ``python run_benchmark.py`` on) of every command in ``text``."""
    found: list[tuple[int, str]] = []
    prose: list[str] = []  # the text outside fenced blocks, line for line (fences blanked)
    lines = text.splitlines()
    in_block, i = False, 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            in_block = not in_block
            prose.append("")
            i += 1
            continue
        if not in_block:
            prose.append(line)
            i += 1
            continue
        start, joined = i, COMMENT.sub("", line).rstrip()
        while joined.endswith("\\") and i + 1 < len(lines):
            i += 1
            prose.append("")
            joined = joined[:-1] + " " + COMMENT.sub("", lines[i]).strip()
        prose.append("")
        i += 1
        if PROGRAM in joined:
            found.append((start + 1, joined[joined.index(PROGRAM):]))
    flat = "\n".join(prose)
    for span in re.finditer(r"`((?:[^`\n]|\n(?![ \t]*\n))+)`", flat):  # a span never crosses a blank line
        code = span.group(1)
        if PROGRAM in code:
            lineno = flat.count("\n", 0, span.start(1) + code.index(PROGRAM)) + 1
            command = COMMENT.sub("", code[code.index(PROGRAM):].replace("\n", " "))
            found.append((lineno, command))
    return sorted(found)


def argv_of(command: str) -> list[str]:
    """The program's arguments: the first simple command, without redirections, comments and pipes."""
    lexer = shlex.shlex(REDIRECTION.sub(" ", command), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    words: list[str] = []
    for token in lexer:
        if token in SEPARATORS:
            break
        words.append(token)
    assert words[:2] == PROGRAM.split(), command
    return words[2:]


class _Parsed(Exception):
    """Raised in place of running the command once ``main``'s ``parse_args`` has succeeded."""


def parse_error(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> str | None:
    """None if ``main(argv)`` parses ``argv`` (``--help`` included), else the parser's error line."""
    real_build_parser = cli.build_parser

    def build_parser():
        parser = real_build_parser()
        parse_args = parser.parse_args

        def parse_only(args=None, namespace=None):
            raise _Parsed(parse_args(args, namespace))

        parser.parse_args = parse_only
        return parser

    err = io.StringIO()
    with monkeypatch.context() as patch, contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        patch.setattr(cli, "build_parser", build_parser)
        try:
            cli.main(list(argv))
        except _Parsed:
            return None
        except SystemExit as exit_:
            return None if exit_.code in (0, None) else (err.getvalue().strip() or f"exit {exit_.code}")
    return "main() returned without parsing"


def failures(path: Path, monkeypatch: pytest.MonkeyPatch, text: str | None = None) -> tuple[int, list[str]]:
    commands = commands_in(path.read_text() if text is None else text)
    bad = [f"{path.relative_to(ROOT)}:{lineno}: {command}\n    {error}"
           for lineno, command in commands
           if (error := parse_error(argv_of(command), monkeypatch)) is not None]
    return len(commands), bad


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_commands_parse(path, monkeypatch):
    _, bad = failures(path, monkeypatch)
    assert not bad, f"{len(bad)} documented command(s) the parser rejects:\n" + "\n".join(bad)


def test_the_docs_have_commands_to_check():
    counts = {str(path.relative_to(ROOT)): len(commands_in(path.read_text())) for path in DOC_FILES}
    assert counts["README.md"] >= 5 and sum(counts.values()) >= 40, counts


def test_a_bad_command_is_reported_with_its_line(monkeypatch):
    text = ("Intro with `python run_benchmark.py list` inline.\n\n```bash\n"
            "python run_benchmark.py --methods frozen \\\n    --no-such-option 3   # a comment\n"
            "python run_benchmark.py report --format html --out x.html | tee log > /dev/null\n"
            "python run_benchmark.py preflight --precision fp16 && echo done\n```\n"
            "Wrapped: `python run_benchmark.py run\n--help`, and `python run_benchmark.py status --bogus`.\n")
    count, bad = failures(ROOT / "README.md", monkeypatch, text)
    assert count == 6
    assert [entry.split(": ", 1)[0] for entry in bad] == ["README.md:4", "README.md:7", "README.md:10"]
    assert "--no-such-option" in bad[0] and "unrecognized arguments" in bad[0]
    assert "fp16" in bad[1] and "invalid choice" in bad[1]
    assert "--bogus" in bad[2]
