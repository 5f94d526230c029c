"""Long transfers draw a progress bar on a terminal and print nothing anywhere else."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from model_ops.artifacts import ArtifactStore
from model_ops.artifacts.progress import SHOW_FROM_BYTES

SCRIPT = """
import sys
from model_ops.artifacts import ArtifactStore
stored = ArtifactStore.open(sys.argv[1]).put(sys.argv[2])
print("stored", stored.digest)
"""


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "weights.bin"
    with open(path, "wb") as f:
        f.truncate(SHOW_FROM_BYTES + 1)  # sparse: large, but cheap to make
    return path


def test_quiet_when_not_on_a_terminal(tmp_path: Path, big_file: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MODEL_OPS_PROGRESS"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "root"), str(big_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""


def test_bar_on_a_terminal(tmp_path: Path, big_file: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MODEL_OPS_PROGRESS"}
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a real terminal has a size
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "root"), str(big_file)],
        env=env,
        stdin=follower,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=120) == 0
    screen = b"".join(chunks).decode(errors="replace")
    assert "storing weights.bin" in screen and "stored " in screen


def test_small_transfers_never_draw(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODEL_OPS_PROGRESS", raising=False)
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 1000)
    ArtifactStore.open(tmp_path / "root").put(small)
    assert capsys.readouterr().err == ""
