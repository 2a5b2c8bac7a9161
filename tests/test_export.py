"""ONNX export of the attention modules (ccnet_edu.export), checked in onnxruntime.

Every model is exported once (module-scoped cache) at an odd, non-square size
with dynamic batch, height and width, gamma != 0 and random BatchNorm
statistics, then run in onnxruntime at the export size and at a second size
(other batch, height and width) through the same ONNX graph.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ccnet_edu import (
    ISAHead,
    NonLocal2d,
    RCCAHead,
    RecurrentCrissCrossAttention,
    SANetHead,
    export,
    models,
    ops,
)
from ccnet_edu.functional import criss_cross_attention_reference

# `make test` installs the export extra; elsewhere the file skips with the reason.
pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")
pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")
pytest.importorskip("onnxscript", reason="the export extra (onnxscript) is not installed")

RTOL = 1e-4  # onnxruntime vs PyTorch, relative to each output's largest entry
C = 16


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """gamma = 0.7 and random BatchNorm affine parameters and statistics, then eval()."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.5, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
                module.weight.uniform_(0.5, 1.5, generator=gen)
                module.bias.normal_(0.0, 0.2, generator=gen)
        for name, parameter in model.named_parameters():
            if name.split(".")[-1] == "gamma":
                parameter.fill_(0.7)
    return model.eval()


def _feature_maps(batch: int, sizes, channels=(8, 8, 16, 16)) -> list[torch.Tensor]:
    return [torch.randn(batch, c, h, w) for c, (h, w) in zip(channels, sizes, strict=True)]


def _case(name: str):
    """``(model, example, second input)`` for each exported model."""
    torch.manual_seed(0)
    x, x2 = torch.randn(2, C, 13, 17), torch.randn(3, C, 9, 22)
    if name.startswith("rcca_head"):
        impl = name.removeprefix("rcca_head").lstrip("_") or "reference"
        model = RCCAHead(C, 5, mid_channels=C, out_channels=8, impl=impl)
    elif name.startswith("rcca"):
        impl = name.removeprefix("rcca").lstrip("_") or "reference"
        model = RecurrentCrissCrossAttention(C, impl=impl)
    elif name == "nonlocal":
        model = NonLocal2d(C)
    elif name == "nonlocal_original":
        model = NonLocal2d(C, mode="original")
    elif name == "isa_head":
        model = ISAHead(C, 5, block_size=(4, 4))  # 13 x 17 pads to 16 x 20, 9 x 22 to 12 x 24
    elif name == "sa_head":
        model = SANetHead([8, 8, 16, 16], 5, channels=8, pool=4)
        x = (_feature_maps(2, [(25, 33), (13, 17), (7, 9), (5, 7)]),)
        x2 = (_feature_maps(1, [(19, 23), (10, 12), (5, 6), (3, 4)]),)
    else:
        raise KeyError(name)
    return _randomize(model), x, x2


REFERENCE = ["rcca", "rcca_head", "nonlocal", "nonlocal_original", "isa_head", "sa_head"]
FUSED = ["rcca_fused", "rcca_head_fused", "rcca_head_auto"]
_cache: dict[str, tuple] = {}


@pytest.fixture(scope="module")
def built_op() -> None:
    """The fused operator must build here (as in test_ops.py): a failure fails the test."""
    ops.load(cuda=False)


def _exported(name: str):
    if name not in _cache:
        model, x, x2 = _case(name)
        result = export.to_onnx(model, x, check_inputs=[x2], rtol=RTOL)
        _cache[name] = model, x, x2, result
    return _cache[name]


def _dynamic_dims(result) -> list[tuple[str, str, str]]:
    return [(s[0], s[2], s[3]) for s in result.input_shapes]


@pytest.mark.parametrize("name", REFERENCE)
def test_onnxruntime_matches_pytorch(name):
    model, x, x2, result = _exported(name)
    assert len(result.checks) == 2
    assert result.max_rel_diff <= RTOL, result.checks
    # The second check ran another batch, height and width through the same graph.
    assert result.checks[0].shapes != result.checks[1].shapes
    assert all(isinstance(d, str) for dims in _dynamic_dims(result) for d in dims)
    assert fused_free(result)


def fused_free(result) -> bool:
    return not any(n.domain.startswith("ccnet") for n in result.program.model_proto.graph.node)


@pytest.mark.parametrize("name", FUSED)
def test_fused_model_exports_through_the_decomposition(name, built_op):
    model, x, x2 = _case(name)
    # Without the decomposition the traced graph holds the custom operator ...
    traced = torch.export.export(model, x if isinstance(x, tuple) else (x,))
    assert export.fused_ops_in(traced) == ["ccnet_edu.criss_cross_attention.default"]
    # ... which to_onnx replaces by the reference: standard ONNX operators only.
    model, x, x2, result = _exported(name)
    assert result.max_rel_diff <= RTOL, result.checks
    assert export.fused_ops_in(result.exported_program) == []
    assert fused_free(result)
    ops_used = {n.op_type for n in result.program.model_proto.graph.node}
    assert {"Softmax", "GatherElements", "ScatterElements"} <= ops_used


def test_fused_and_reference_export_agree(built_op):
    """The fused model's ONNX graph computes what the reference model's computes."""
    reference, _, x2, ref_result = _exported("rcca_head")
    fused, _, _, fused_result = _exported("rcca_head_fused")
    # _case seeds before building, so both models hold the same weights.
    for a, b in zip(fused.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    a, b = fused_result.run(x2)[0], ref_result.run(x2)[0]
    assert float((a - b).abs().max() / b.abs().max()) <= RTOL


@pytest.mark.parametrize("name", ["rcca_head", "nonlocal", "isa_head", "rcca_head_fused"])
def test_exported_program_runs_at_a_second_size(name, request):
    """The torch.export path alone: the ExportedProgram is dynamic and decomposed."""
    if "fused" in name:
        request.getfixturevalue("built_op")
    model, x, x2, result = _exported(name)
    program = result.exported_program
    with torch.no_grad():
        expected, actual = model(x2), program.module()(x2)
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=1e-5)
    assert set(result.dynamic_ranges) == {"batch", "height", "width"}


def test_saved_file_reloads(tmp_path):
    model, x, x2 = _case("nonlocal")
    path = tmp_path / "sub" / "nonlocal.onnx"
    result = export.to_onnx(model, x, path, rtol=RTOL)
    assert result.path == path and path.is_file()
    session = export.onnx_session(path, threads=1)
    (out,) = session.run(None, {session.get_inputs()[0].name: x2.numpy()})
    with torch.no_grad():
        expected = model(x2)
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=RTOL, atol=1e-5)


def test_trained_checkpoint_exports(built_op):
    """The shipped RCCA (R = 2) network end to end, through the fused operator.

    (After the decomposition its graph is the reference's: the chapter on
    deployment exports both.)
    """
    torch.manual_seed(0)
    model = models.load_pretrained("rcca2")
    x, x2 = torch.rand(2, 3, 72, 104), torch.rand(1, 3, 56, 96)
    result = export.to_onnx(export.with_impl(model, "fused"), x, check_inputs=[x2], rtol=RTOL)
    assert result.input_shapes == [["batch", 3, "height", "width"]]
    with torch.no_grad():
        labels = model(x2).argmax(1)
    assert torch.equal(result.run(x2)[0].argmax(1), labels)
    deployed = result.as_module().eval()  # the nn.Module face that train.evaluate takes
    assert torch.equal(deployed(x2), result.run(x2)[0])


def test_compare_detects_changed_weights():
    """The check can fail: weights changed after export give a large difference."""
    model, x, x2, result = _exported("rcca")
    changed = _randomize(RecurrentCrissCrossAttention(C))
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.cca.gamma.fill_(-0.7)
    assert result.compare(changed, x).max_rel_diff > 1e-2
    assert result.compare(model, x).max_rel_diff <= RTOL


class _ShapeGuarded(nn.Module):
    """Python control flow on a size: the export is only valid for H > 10."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.shape[2] > 10 else x


def test_mismatch_raises():
    x, small = torch.randn(2, 3, 13, 17), torch.randn(2, 3, 5, 17)
    report = export.to_onnx(_ShapeGuarded().eval(), x, check_inputs=[small], rtol=None)
    assert report.dynamic_ranges["height"][0] == 11  # the exporter recorded the guard
    # ONNX does not carry it: at H = 5 the graph still doubles, PyTorch does not.
    assert report.checks[0].max_rel_diff == 0.0 and report.checks[1].max_rel_diff == 1.0
    with pytest.raises(ValueError, match="differs from PyTorch"):
        export.to_onnx(_ShapeGuarded().eval(), x, check_inputs=[small])


def test_training_mode_and_bad_inputs_raise():
    model = RecurrentCrissCrossAttention(C)
    with pytest.raises(ValueError, match=r"eval\(\) mode"):
        export.export_program(model, torch.randn(1, C, 5, 6))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        export.export_program(lambda x: x, torch.randn(1, C, 5, 6))
    with pytest.raises(TypeError, match="example must be a tensor"):
        export.export_program(model.eval(), [1, 2])
    with pytest.raises(ValueError, match="rtol"):
        export.to_onnx(model.eval(), torch.randn(1, C, 5, 6), rtol=-1)
    with pytest.raises(ValueError, match="threads"):
        export.onnx_session(b"", threads=0)


def test_with_impl_copies_and_checks():
    model = RCCAHead(C, 5, mid_channels=C)
    fused = export.with_impl(model, "fused")
    assert fused.rcca.cca.impl == "fused" and model.rcca.cca.impl == "reference"
    assert fused is not model
    with pytest.raises(ValueError, match="impl must be one of"):
        export.with_impl(model, "cuda")
    with pytest.raises(ValueError, match="no CrissCrossAttention"):
        export.with_impl(NonLocal2d(C), "fused")


def test_decomposition_is_the_reference(built_op):
    op = torch.ops.ccnet_edu.criss_cross_attention.default
    assert export.decompositions() == {op: criss_cross_attention_reference}
