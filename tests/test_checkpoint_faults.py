"""A checkpoint's faults: any damage is a ``ValueError`` naming the file, never a crash.

* a bit-flip sweep over a small checkpoint: every flip either raises ``ValueError``
  naming the file, or loads the very same weights, config and meta (a flip in bytes the
  loader never reads); never ``RuntimeError``, ``OverflowError`` or a pickle error;
* the digest covers the config and meta too (a changed meta with the old digest is
  refused), and an absurd config with a valid digest (``num_classes=2**62``) is refused
  before anything is allocated;
* paths that are not a checkpoint file: a directory, a FIFO, ``''``;
* the earlier weights-only format is refused with the command that upgrades it, and
  ``python -m ccnet_edu.checkpoint redigest`` upgrades it (atomically) without changing
  the weights, config or meta.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ccnet_edu.checkpoint import (
    CHECKPOINT_DIR,
    add_digest,
    load_checkpoint,
    payload_digest,
    save_checkpoint,
    state_dict_digest,
)
from ccnet_edu.models import SegmentationModel

ROOT = Path(__file__).resolve().parents[1]
META = {"seed": 3, "command": "python -m ccnet_edu.train --head fcn", "metrics": {"miou": 0.5}}


def _small(tmp_path: Path, name: str = "small.pt") -> Path:
    torch.manual_seed(0)
    model = SegmentationModel("fcn", width=1, mid_channels=1, num_classes=2)
    return save_checkpoint(tmp_path / name, model, META)


def _same(model: SegmentationModel, want: SegmentationModel) -> bool:
    a, b = model.state_dict(), want.state_dict()
    return (
        a.keys() == b.keys()
        and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
        and model.config == want.config
        and model.meta == want.meta
    )


def _flips(size: int, pickle_end: int, count: int) -> list[tuple[int, int]]:
    """A deterministic sample of (byte, bit): half in data.pkl (the structure, where a flip
    changes what is built), half over the whole file (tensor bytes, zip headers)."""
    rng = random.Random(2026)
    first = [(rng.randrange(pickle_end), rng.randrange(8)) for _ in range(count // 2)]
    rest = [(rng.randrange(size), rng.randrange(8)) for _ in range(count - count // 2)]
    return first + rest


def test_bit_flip_sweep_is_a_value_error_naming_the_file_or_changes_nothing(tmp_path):
    path = _small(tmp_path)
    want = load_checkpoint(path)
    data = path.read_bytes()
    pickle_end = data.find(b"archive/.format_version")  # data.pkl comes first in the zip
    assert pickle_end > 0
    damaged = tmp_path / "damaged.pt"
    refused = unchanged = 0
    for at, bit in _flips(len(data), pickle_end, 1000):
        flipped = bytearray(data)
        flipped[at] ^= 1 << bit
        damaged.write_bytes(bytes(flipped))
        try:
            model = load_checkpoint(damaged)
        except ValueError as err:
            assert str(damaged) in str(err), (at, bit, err)
            refused += 1
            continue
        # Any other exception type fails the test here, with the flip in the traceback.
        assert _same(model, want), f"byte {at} bit {bit} changed what was loaded"
        unchanged += 1
    assert refused >= 500 and refused + unchanged == 1000


def _resave(path: Path, out: Path, reseal: bool, **changes) -> Path:
    payload = torch.load(path, weights_only=True)
    payload.update(changes)
    if reseal:
        payload["digest"] = payload_digest(payload)
    torch.save(payload, out)
    return out


@pytest.mark.parametrize(
    "changes",
    [
        {"meta": {**META, "seed": 4}},
        {"meta": {**META, "metrics": {"miou": 0.9}}},
        {"config": {"head": "fcn", "width": 1, "mid_channels": 1, "num_classes": 2,
                    "embedding_channels": 0, "dropout": 0.5}},
        {"format": "ccnet_edu.checkpoint/2", "digest": "0" * 64},
    ],
)  # fmt: skip
def test_the_digest_covers_config_and_meta(tmp_path, changes):
    out = _resave(_small(tmp_path), tmp_path / "edited.pt", reseal=False, **changes)
    with pytest.raises(ValueError, match=r"edited.pt is damaged: its config or meta"):
        load_checkpoint(out)


@pytest.mark.parametrize("key", ["num_classes", "width", "mid_channels", "embedding_channels"])
def test_an_absurd_config_with_a_valid_digest_is_refused_before_allocation(tmp_path, key):
    path = _small(tmp_path)
    config = {**torch.load(path, weights_only=True)["config"], key: 2**62}
    out = _resave(path, tmp_path / "absurd.pt", reseal=True, config=config)
    with pytest.raises(ValueError, match=r"absurd.pt"):
        load_checkpoint(out)


def test_paths_that_are_not_a_checkpoint_file_say_what_they_are(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        load_checkpoint(tmp_path)
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        load_checkpoint(fifo)  # refused without opening it (which would block)
    with pytest.raises(ValueError, match="must not be empty"):
        load_checkpoint("")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def _weights_only_format(path: Path, out: Path) -> Path:
    """``path`` as the earlier format wrote it (digest of the weights only)."""
    payload = torch.load(path, weights_only=True)
    del payload["digest"]
    payload["format"] = "ccnet_edu.checkpoint/1"
    torch.save(payload, out)
    return out


def test_the_weights_only_format_is_refused_and_redigest_upgrades_it(tmp_path):
    want = load_checkpoint(_small(tmp_path))
    old = _weights_only_format(tmp_path / "small.pt", tmp_path / "old.pt")
    with pytest.raises(ValueError, match=r"old.pt has the format .*redigest"):
        load_checkpoint(old)
    result = subprocess.run(
        [sys.executable, "-m", "ccnet_edu.checkpoint", "redigest", str(old)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert _same(load_checkpoint(old), want)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_redigest_refuses_a_damaged_weights_only_file(tmp_path):
    payload = torch.load(_small(tmp_path), weights_only=True)
    payload["format"] = "ccnet_edu.checkpoint/1"
    del payload["digest"]
    payload["state_dict_digest"] = "f" * 64
    torch.save(payload, tmp_path / "bad.pt")
    before = (tmp_path / "bad.pt").read_bytes()
    with pytest.raises(ValueError, match=r"bad.pt is damaged: its weights"):
        add_digest(tmp_path / "bad.pt")
    assert (tmp_path / "bad.pt").read_bytes() == before


@pytest.mark.parametrize(
    "argv,names",
    [
        (["redigest"], "PATH"),
        (["redigest", "{tmp}"], "is a directory"),
        (["redigest", "{tmp}/missing.pt"], "not found"),
        (["redigest", ""], "must not be empty"),
        (["upgrade", "x.pt"], "invalid choice"),
    ],
)
def test_redigest_command_line_refuses_bad_paths_in_one_line(tmp_path, capsys, argv, names):
    from ccnet_edu.checkpoint import main

    with pytest.raises(SystemExit) as info:
        main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and names in err, err


def test_every_shipped_checkpoint_is_in_the_current_format_and_loads():
    for path in sorted(CHECKPOINT_DIR.glob("*.pt")):
        payload = torch.load(path, weights_only=True)
        assert payload["format"] == "ccnet_edu.checkpoint/2", path.name
        assert payload["digest"] == payload_digest(payload), path.name
        model = load_checkpoint(path)
        assert state_dict_digest(model) == payload["state_dict_digest"], path.name
        assert model.meta == payload["meta"] and model.config == payload["config"]
