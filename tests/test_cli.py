"""The command line: bad input ends in one line naming the file/frame/key and a non-zero exit."""
import os
import subprocess
import sys

import pytest

from conftest import EXAMPLE_DATA

from mlip.cli import main


def _mlip(*args):
    return subprocess.run([sys.executable, "-m", "mlip", *args], capture_output=True, text=True, timeout=300)


def test_demo_predicts_for_shipped_data(capsys):
    assert main(["demo", os.path.join(EXAMPLE_DATA, "si_test.extxyz"), "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "si_test.extxyz:0" in out and "si_test.extxyz:1" in out


@pytest.mark.parametrize("content,expected", [
    (None, "missing.xyz: file not found"),
    ("2\nProperties=species:S:1:pos:R:3\nH 0 0 0\nH 0 0 x\n", "cannot parse"),
    ("2\nProperties=species:S:1:pos:R:3\nH 0 0 0\nH 0 0 nan\n", "frame 0, key 'positions': positions contain NaN"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, content, expected):
    path = tmp_path / "missing.xyz"
    if content is not None:
        path.write_text(content)
    res = _mlip("demo", str(path))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in res.stderr


def test_unreadable_checkpoint_is_reported(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    res = _mlip("demo", os.path.join(EXAMPLE_DATA, "si_test.extxyz"), "--model", str(bad))
    assert res.returncode == 2 and "model.pt: not a readable mlip checkpoint" in res.stderr
