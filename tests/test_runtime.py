"""ccnet_edu.runtime: the device a chapter picks, TF32 off, and a missing operator that is said."""

from __future__ import annotations

import pytest
import torch

from ccnet_edu import ops, runtime


@pytest.fixture
def tf32_flags():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("gpu", [False, True])
def test_pick_device_names_the_device_and_turns_tf32_off(monkeypatch, tf32_flags, gpu):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    assert runtime.pick_device() == ("cuda" if gpu else "cpu")
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is False


def test_describe_names_the_cpu_and_its_threads():
    text = runtime.describe("cpu")
    assert text.startswith("CPU ")
    assert f"{torch.get_num_threads()} PyTorch thread" in text
    assert "meta" in runtime.describe(torch.device("meta"))


@pytest.mark.parametrize(("device", "error"), [(3, TypeError), ("no-such-device", ValueError)])
def test_describe_rejects_what_is_not_a_device(device, error):
    with pytest.raises(error, match="device"):
        runtime.describe(device)


def test_load_operator_returns_what_ops_load_returns(monkeypatch):
    loaded = [object()]
    calls = []
    monkeypatch.setattr(ops, "load", lambda cuda=None: calls.append(cuda) or loaded)
    assert runtime.load_operator(cuda=False) is loaded
    assert calls == [False]


def test_load_operator_says_why_and_goes_on_when_the_build_fails(monkeypatch, capsys):
    def fail(cuda=None):
        raise ops.BuildError("no C++ compiler found (c++)\nsecond line")

    monkeypatch.setattr(ops, "load", fail)
    assert runtime.load_operator() == []
    printed = capsys.readouterr().out
    assert "not available on this machine (no C++ compiler found (c++))" in printed
    assert "second line" not in printed
    assert "C++ compiler" in printed and "skipped" in printed


def test_try_build_names_what_it_could_not_build(capsys):
    def fail():
        raise ops.BuildError("no C++ compiler (set CXX) to build the kernels' CPU emulation")

    assert runtime.try_build(fail, "the kernels' CPU emulation") is None
    printed = capsys.readouterr().out
    assert printed.startswith("The kernels' CPU emulation is not available on this machine")
    assert runtime.try_build(lambda: 42, "anything") == 42
    assert capsys.readouterr().out == ""


def test_try_build_lets_other_errors_through():
    def broken():
        raise ValueError("a bug, not a missing compiler")

    with pytest.raises(ValueError, match="a bug"):
        runtime.try_build(broken, "anything")
