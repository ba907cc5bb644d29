"""The commands' output rules (restorecli.console): data on stdout, everything else on stderr."""

from __future__ import annotations

import json
import sys

import pytest

from restorecli import console
from restorecli.console import Output


class _Terminal:
    """Stands in for a stream attached to a terminal (only ``isatty`` is asked)."""

    def __init__(self, stream: object) -> None:
        self.stream = stream

    def isatty(self) -> bool:
        return True

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)


def test_json_is_one_document_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    output = Output(json_output=True)
    output.data({"files": [1, 2], "ok": True})
    output.note("a note")
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"files": [1, 2], "ok": True}
    assert captured.err == "a note\n"
    Output().data({"iteration": 3}, indent=None)
    assert capsys.readouterr().out == '{"iteration": 3}\n'  # one line, for logs of training runs


def test_quiet_silences_stderr_but_not_data_or_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    output = Output(quiet=True)
    output.note("progress note")
    output.line("/path/to/weights.safetensors")
    with output.progress() as bars:
        bars.update(bars.add("files", total=2), completed=1)
    assert capsys.readouterr() == ("/path/to/weights.safetensors\n", "")
    output.warning("Interrupted; resume with --resume latest.pth")
    assert capsys.readouterr().err == "Interrupted; resume with --resume latest.pth\n"


def test_bars_only_between_terminals_and_never_under_quiet_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not console.bars_wanted()  # pytest captures both streams: not terminals
    monkeypatch.setattr(sys, "stderr", _Terminal(sys.stderr))
    assert not console.bars_wanted()  # stdout piped: no bars even though stderr is a terminal
    monkeypatch.setattr(sys, "stdout", _Terminal(sys.stdout))
    assert console.bars_wanted() and Output().bars_enabled
    assert not console.bars_wanted(quiet=True) and not Output(json_output=True).bars_enabled


def test_progress_bars_draw_on_stderr_only(capsys: pytest.CaptureFixture[str]) -> None:
    with console.progress_bars(enabled=True, stats="loss {task.fields[loss]:.2f}", keep=True) as bars:
        assert bars.enabled
        bar = bars.add("train", total=4, loss=0.0)
        bars.update(bar, completed=4, loss=0.25)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "train" in captured.err and "4/4" in captured.err and "loss 0.25" in captured.err


def test_tables_on_a_pipe_are_not_wrapped_at_80_columns(capsys: pytest.CaptureFixture[str]) -> None:
    from rich.table import Table

    table = Table("input", "output")
    table.add_row("/a/very/long/folder/name/" * 3 + "photo.png", "/out/" + "x" * 60 + ".png")
    Output().show(table)
    out = capsys.readouterr().out
    assert "/a/very/long/folder/name/" * 3 + "photo.png" in out and max(map(len, out.splitlines())) > 80


def test_notes_and_table_cells_are_one_line_of_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    # file names may hold newlines, terminal escapes and rich's "[...]" tags
    assert console.one_line("a\nb\tc\x1b[31md\x7f é 画") == "a\\nb\\tc\\x1b[31md\\x7f é 画"
    assert console.cell("IMG [edited].png") == "IMG \\[edited].png"
    Output(quiet=False).note("Error: in/bad\nname.png: not an image")
    assert capsys.readouterr().err == "Error: in/bad\\nname.png: not an image\n"
