"""Atomic file writes (``ccnet_edu._io``) and every writer of the project that uses them.

A write that fails half-way -- a file-size limit (``RLIMIT_FSIZE``, as a full disk
would), an exception, a process killed with SIGKILL -- leaves the old file whole: the
new bytes go to a temporary file in the same folder, renamed over the target only once
complete.  Checked for the primitives and for each writer: checkpoints
(``save_checkpoint``, ``add_digest``), the CSVs of ``ops bench`` and of the analysis,
exported ONNX files, the training CLI's digest files.  Special files (a FIFO,
``/dev/full``) are refused rather than replaced by a regular file.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ccnet_edu import _io

ROOT = Path(__file__).resolve().parents[1]
OLD = b"old contents, which must survive\n" * 64

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and rlimits")


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------- the primitives


def test_atomic_write_replaces_and_keeps_permissions(tmp_path):
    path = tmp_path / "out.txt"
    path.write_bytes(OLD)
    path.chmod(0o640)
    _io.atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    _io.atomic_write_bytes(tmp_path / "fresh.bin", b"\x00\x01")
    assert (tmp_path / "fresh.bin").read_bytes() == b"\x00\x01"
    assert _temps(tmp_path) == []


def test_an_exception_mid_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(OLD)
    with pytest.raises(RuntimeError, match="half-way"):
        with _io.atomic_write(path) as handle:
            handle.write(b"partial")
            raise RuntimeError("half-way")
    assert path.read_bytes() == OLD
    assert _temps(tmp_path) == []


def test_csv_and_figure_writers(tmp_path):
    _io.atomic_write_csv(tmp_path / "t.csv", ["a", "b"], [{"a": 1, "b": "x,y"}])
    assert (tmp_path / "t.csv").read_bytes() == b'a,b\r\n1,"x,y"\r\n'

    class Figure:  # what atomic_save_figure needs of a matplotlib figure
        def savefig(self, handle, format, **kwargs):
            handle.write(f"{format} {kwargs}".encode())

    _io.atomic_save_figure(Figure(), tmp_path / "f.PNG", dpi=3)
    assert (tmp_path / "f.PNG").read_bytes() == b"png {'dpi': 3}"


def test_special_files_are_refused_not_replaced(tmp_path):
    with pytest.raises(IsADirectoryError):
        _io.atomic_write_bytes(tmp_path, b"x")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        _io.atomic_write_bytes(fifo, b"x")
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    if Path("/dev/full").exists():
        with pytest.raises(ValueError, match="not a regular file"):
            _io.atomic_write_text("/dev/full", "x")
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


# --------------------------------------------------------------------------- failing children

# Each writer, run in a child process on `path`, whose old contents must survive.
PREAMBLE = """
import os, resource, signal, sys, time
from pathlib import Path
import torch
path = Path(sys.argv[1])
"""
WRITERS = {
    "atomic_write_bytes": """
from ccnet_edu import _io
_io.atomic_write_bytes(path, b"n" * 200_000)
""",
    "save_checkpoint": """
from ccnet_edu.checkpoint import save_checkpoint
from ccnet_edu.models import SegmentationModel
torch.manual_seed(1)
save_checkpoint(path, SegmentationModel("rcca2"), {"seed": 1})
""",
    "add_digest": """
import shutil
from ccnet_edu.checkpoint import add_digest, CHECKPOINT_DIR
add_digest(CHECKPOINT_DIR / "rcca2.pt", out=path)
""",
    "ops.benchmark.write_csv": """
from ccnet_edu.ops import benchmark
rows = [benchmark.Row("B=1 C'=8 C=8 8x8", "fused", "forward", 1.0, 1.0, 1.0, 0.0)] * 5000
benchmark.write_csv(rows, path)
""",
    "analysis.compare.write_csv": """
from ccnet_edu.analysis import compare
compare.write_csv([compare.Row("non-local", 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1)] * 5000, path)
""",
}


ONNX_WRITER = """
from ccnet_edu import NonLocal2d, export
export.to_onnx(NonLocal2d(64).eval(), torch.randn(1, 64, 5, 6), path)
"""


def _old_checkpoint(path: Path) -> dict:
    from ccnet_edu.checkpoint import load_checkpoint, save_checkpoint
    from ccnet_edu.models import SegmentationModel

    torch.manual_seed(0)
    save_checkpoint(path, SegmentationModel("fcn", width=2, mid_channels=2), {"seed": 0})
    return load_checkpoint(path).state_dict()


def _child(code: str, path: Path, *, limit: int | None = None, **popen) -> subprocess.Popen:
    setup = ""
    if limit is not None:  # a file-size limit, as a full disk: writes past it fail (EFBIG)
        setup = (
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        )
    script = PREAMBLE + setup + textwrap.dedent(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", script, str(path)], env=env, cwd=ROOT, text=True, **popen
    )


def _survives(path: Path, old: bytes | None, old_state: dict | None) -> None:
    if old_state is not None:
        from ccnet_edu.checkpoint import load_checkpoint

        state = load_checkpoint(path).state_dict()
        assert all(torch.equal(state[k], v) for k, v in old_state.items())
    else:
        assert path.read_bytes() == old


def test_a_file_size_limit_leaves_every_old_file(tmp_path):
    """RLIMIT_FSIZE below each new file's size: every writer fails (EFBIG), every old file
    is intact and no temporary file is left (save_checkpoint once wrote over the target:
    the old checkpoint was lost).  One child process runs every writer in turn."""
    writers = dict(WRITERS)
    if importlib.util.find_spec("onnxscript") and importlib.util.find_spec("onnxruntime"):
        writers["export.to_onnx"] = ONNX_WRITER
    olds = {}
    for k, writer in enumerate(writers):
        folder = tmp_path / str(k)
        folder.mkdir()
        path = folder / ("old.pt" if writer in ("save_checkpoint", "add_digest") else "old.bin")
        state = _old_checkpoint(path) if path.suffix == ".pt" else None
        if state is None:
            path.write_bytes(OLD)
        olds[writer] = (path, path.read_bytes(), state)
    code = "results = {}\n"
    for writer, (path, _, _) in olds.items():
        body = textwrap.indent(textwrap.dedent(writers[writer]).replace("path", "target"), "    ")
        code += f"target = Path({str(path)!r})\ntry:\n{body}\n"
        code += f"    results[{writer!r}] = 'written'\n"
        code += f"except OSError as err:\n    results[{writer!r}] = err.strerror\n"
    code += "print(results)\n"
    limit = min(len(old) for _, old, _ in olds.values()) // 2
    child = _child(code, tmp_path / "unused", limit=limit, stdout=subprocess.PIPE)
    out, _ = child.communicate(timeout=600)
    assert child.returncode == 0, out
    results = ast.literal_eval(out.strip().splitlines()[-1])
    assert results == {writer: "File too large" for writer in writers}
    for path, old, state in olds.values():
        _survives(path, old, state)
        assert _temps(path.parent) == []  # the failed write cleaned up after itself


@pytest.mark.parametrize("writer", ["atomic_write_bytes", "save_checkpoint"])
def test_a_process_killed_mid_write_leaves_the_old_file(tmp_path, writer):
    """SIGKILL while the new file is being written (its bytes written, not yet renamed):
    the old file is intact; only a temporary file beside it may remain."""
    path = tmp_path / ("old.pt" if writer == "save_checkpoint" else "old.bin")
    old_state = _old_checkpoint(path) if writer == "save_checkpoint" else None
    if old_state is None:
        path.write_bytes(OLD)
    old = path.read_bytes()
    stall = """
import ccnet_edu._io as io_module
def stalled_fsync(fd):
    print("writing", flush=True)
    time.sleep(600)
io_module.os = type("os", (), {**vars(os), "fsync": staticmethod(stalled_fsync)})
"""
    child = _child(stall + WRITERS[writer], path, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == "writing"
        child.kill()  # SIGKILL: no handler, no cleanup
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -9
    _survives(path, old, old_state)
    assert len(_temps(tmp_path)) == 1  # the new bytes, never renamed over the target
