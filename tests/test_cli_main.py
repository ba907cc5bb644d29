"""The console entry point: usage errors are one line on stderr with exit code 2; --help is instant."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "restorecli", *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("sr", "--scale", "abc", "x.png"), "--scale"),
        (("sr", "--scale", "5", "x.png"), "expected 2, 3 or 4, got 5"),
        (("frobnicate",), "No such command"),
        (("sr", "--no-such-option", "x.png"), "--no-such-option"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(args: tuple[str, ...], message: str) -> None:
    done = _run(*args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], done.stderr
    assert done.stdout == ""


def test_help_does_not_import_torch() -> None:
    code = "import sys; from restorecli.cli import app; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"
    assert _run("--help").returncode == 0


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("sr", "--json", "--scale", "5", "x.png"), 2),  # a usage error
        (("denoise", "--json", "--sigma", "25", "no-such-file.png"), 2),  # nothing to process
    ],
)
def test_json_failures_before_any_document_print_one_error_document(args: tuple[str, ...], code: int, tmp_path) -> None:
    """Under --json a command that stops before its report still prints one JSON document on
    stdout, so a script parsing stdout reads why; the Error line stays on stderr."""
    import json

    done = subprocess.run(
        [sys.executable, "-m", "restorecli", *args], capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path
    )
    assert done.returncode == code
    document = json.loads(done.stdout)
    assert document["exit_code"] == code and document["error"]
    assert done.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert done.stdout.count("{") == 1  # one document


def _commands(group: object, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    found: list[tuple[tuple[str, ...], object]] = []
    subcommands = getattr(group, "commands", None)
    if subcommands:
        for name, command in subcommands.items():
            found += _commands(command, (*path, name))
    else:
        found.append((path, group))
    return found


def test_examples_in_help_texts_use_options_the_commands_have() -> None:
    """Every `restore ...` example in a command's help names that command's own options
    (`restore eval --help` once showed `-m`, which eval does not have)."""
    import re

    import typer

    from restorecli.cli import app

    commands = dict(_commands(typer.main.get_command(app)))
    checked = 0
    for path, command in commands.items():
        for example in re.findall(r"`restore ([^`]+)`", command.help or ""):
            words = example.split()
            target = max((p for p in commands if tuple(words[: len(p)]) == p), key=len, default=None)
            if target is None:
                continue
            names = {opt for param in commands[target].params for opt in (*param.opts, *param.secondary_opts)}
            for word in words[len(target) :]:
                option = word.split("=")[0]
                if option.startswith("-") and option != "-":
                    assert option in names, f"`restore {' '.join(path)} --help` shows `restore {example}`: no {option}"
                    checked += 1
    assert checked > 10
