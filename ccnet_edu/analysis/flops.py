"""Counting floating-point operations: measured, and in closed form.

A *measured* count runs the module under
:class:`torch.utils.flop_counter.FlopCounterMode`, which sees every ATen
operator the module dispatches and adds up a formula per operator.  Its
conventions, which every number in this package inherits:

* one multiply-add is **2 FLOPs** (``mm``/``bmm``/``convolution``);
* a convolution's **bias add is not counted** (nor is the bias of ``addmm``'s
  ``input``): a 1x1 conv ``C -> C_out`` on ``N`` pixels is ``2 N C C_out``;
* **element-wise operators are not counted**: softmax, exp, the ``gamma * out + x``
  residual, BatchNorm, ReLU, gathers, padding and permutations cost 0.  For
  attention these are ``O(N L)`` next to the ``O(N L C)`` matmuls (``L`` the
  number of positions each pixel attends to), so the omission is small;
* ``einsum`` is counted from its equation: a two-operand einsum with a summed
  index costs ``2 x`` (the product of the sizes of all its indices), the
  multiply-adds it executes.  The counter alone would charge the ``bmm`` it is
  lowered to, which is the same number, except that PyTorch lowers a
  contraction over a size-1 index (``C' = 1``, ``W = 1``, ``H = 2``) to an
  element-wise multiply that the counter does not charge at all.
  :class:`AttentionFlopCounter` intercepts ``torch.einsum`` (a
  ``TorchFunctionMode``), charges the formula and silences the ATen operators
  inside it.

The counter does not know the fused criss-cross operator of
:mod:`ccnet_edu.ops` (one opaque call).  :func:`flop_formulas` teaches it a
formula: ``H + W - 1`` energies and the aggregation over them for each pixel,
as CCNet's Eqs. (1)-(2) define them (Huang et al., ICCV 2019, Sec. 3.2), and
twice that for the backward.  For the fused operator a count is therefore this
formula read back, a convention (each position of the cross once, the book's
count; the first author's count, in issue #2 of the official repository
speedinghzl/CCNet, has ``H + W + 1`` positions and the convolution biases),
not a measurement of the kernels' arithmetic, which differs by path: the fast
CPU path (``csrc/cca_cpu.cpp``) computes each column's energies as a dense
``H x H`` product, centre included, then drops the centre, and aggregates the
column with a dense ``H x H`` matrix whose centre weight is 0
(the readable reference's extra work, below); the tiled CUDA line kernels
(``csrc/cca_lines.h``) compute whole tiles of keys and mask the keys a query
does not see, the column's centre among them; only the portable element
bodies (``csrc/cca_common.h``) skip the centre.  The formulas are passed per call
(``custom_mapping``), so nothing breaks when the operator is not built; an
operator loaded only during the count (a fused module loads it on its first
forward) is taught to the counter when it is first seen, and a ``ccnet_edu``
operator without a formula raises instead of counting 0.

Why the readable criss-cross attention measures slightly *more* than the
closed form (a real count: the counter sees its PyTorch operators):
:func:`ccnet_edu.functional.criss_cross_attention_reference` computes the
column energies over all ``H`` rows and then drops the centre with a gather
(the centre is already in the row part), and aggregates the column over all
``H`` rows with a weight of 0 on the centre (cheaper in memory
than gathering the values).  The counter sees those ``H`` entries, so the
measured count is the closed form plus ``2 N (C' + C)`` FLOPs spent on the
centre a second time (at 97 x 97 with C = 512, C' = 64: 0.5% of the attention
FLOPs, 0.13% of the block's).  The tests check that relation exactly rather
than hiding it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode, shape_wrapper

from .._checks import check_bool, check_callable, check_int, check_positive_pair, check_str

__all__ = [
    "AttentionFlopCounter",
    "einsum_flops",
    "count_flops",
    "flops_by_module",
    "flops_by_kind",
    "flop_formulas",
    "cca_flops",
    "rcca_flops",
    "nonlocal_flops",
    "issa_flops",
    "axial_flops",
    "duplicate_centre_flops",
]

# Operators whose FLOPs are the learned projections (1x1 / 3x3 convolutions).
_CONV_OPS = {"convolution", "convolution_backward", "_convolution"}


# ---------------------------------------------------------------------------
# Teaching the counter the fused operator
# ---------------------------------------------------------------------------


def _fused_forward_flops(query_shape, key_shape, value_shape, *args: Any, **kwargs: Any) -> int:
    # The count charged per pixel (the book's convention, not the kernels' arithmetic): H + W - 1
    # dot products of length C' (energies) and a weighted sum of H + W - 1 value vectors of
    # length C (aggregation), 2 FLOPs per multiply-add.
    batch, qk_channels, height, width = query_shape
    channels = value_shape[1]
    positions = batch * height * width * (height + width - 1)
    return 2 * positions * (qk_channels + channels)


def _fused_backward_flops(
    grad_out_shape,
    grad_attention_shape,
    attention_shape,
    query_shape,
    key_shape,
    value_shape,
    *args: Any,
    **kwargs: Any,
) -> int:
    # Backward of out = A V and e = Q K^T, counted over the same H + W - 1 positions:
    # dA = dout V^T (C), dV = A^T dout (C), dQ = de K (C'), dK = de^T Q (C'): twice the forward.
    # (The softmax backward is element-wise and, as everywhere, not counted.)
    return 2 * _fused_forward_flops(query_shape, key_shape, value_shape)


def flop_formulas() -> dict[Any, Callable[..., int]]:
    """FLOP formulas for the operators ``FlopCounterMode`` cannot see.

    The count they charge is the convention of the module docstring (``H + W - 1``
    positions per pixel), whatever the kernels execute.  Returns ``{op: formula}``
    for ``torch.ops.ccnet_edu.criss_cross_attention``
    (and its backward operator, when :mod:`ccnet_edu.ops` registers one), or
    an empty dict when the operator is not loaded.  Never builds the operator.
    """
    formulas: dict[Any, Callable[..., int]] = {}
    namespace = torch.ops.ccnet_edu
    for name, formula in [
        ("criss_cross_attention", _fused_forward_flops),
        ("criss_cross_attention_backward", _fused_backward_flops),
        # the CUDA code path run on the CPU: charged the same formula
        ("portable_criss_cross_attention", _fused_forward_flops),
        ("portable_criss_cross_attention_backward", _fused_backward_flops),
    ]:
        try:
            formulas[getattr(namespace, name)] = formula
        except (AttributeError, RuntimeError):  # operator not built / not loaded
            pass
    return formulas


# ---------------------------------------------------------------------------
# Measured counts
# ---------------------------------------------------------------------------


def _check_einsum_args(equation: object, shapes: tuple) -> None:
    """An equation string and one tuple of int sizes per operand, one size per index."""
    check_str("equation", equation)
    terms = equation.replace(" ", "").partition("->")[0].split(",")
    for k, shape in enumerate(shapes):
        if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list, torch.Size)):
            raise TypeError(f"shapes[{k}] must be a tuple of ints, got {type(shape).__name__}")
        for size in shape:
            check_int(f"shapes[{k}] entries", size, minimum=0)
        if k < len(terms) and "." not in terms[k] and len(terms[k]) != len(shape):
            raise ValueError(
                f"shapes[{k}] must have one size per index of {terms[k]!r}, got {tuple(shape)}"
            )


def einsum_flops(equation: str, *shapes: tuple[int, ...]) -> int:
    """FLOPs of ``torch.einsum(equation, *operands)`` from the operand shapes.

    Two operands with at least one summed index: ``2 x`` the product of the
    sizes of all distinct indices (one multiply-add per combination).  Anything
    else (one operand, no summed index: a permutation, a reduction or an
    element-wise product) is 0, like every element-wise operator.
    """
    _check_einsum_args(equation, shapes)
    equation = equation.replace(" ", "")
    inputs, _, output = equation.partition("->")
    terms = inputs.split(",")
    if "." in equation or len(terms) != 2 or len(shapes) != 2:
        raise NotImplementedError(f"einsum_flops supports two operands, no '...': {equation!r}")
    if not _:  # implicit output: the indices that appear once, sorted
        letters = "".join(terms)
        output = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, shapes, strict=True):
        for letter, size in zip(term, shape, strict=True):
            sizes[letter] = size
    summed = set(sizes) - set(output)
    return 2 * math.prod(sizes.values()) if summed else 0


class _EinsumMode(TorchFunctionMode):
    """Charges ``torch.einsum`` by :func:`einsum_flops` and silences what runs inside it."""

    def __init__(self, counter: AttentionFlopCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func is not torch.einsum or self.counter._silenced:
            return func(*args, **kwargs)
        equation, *operands = args
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = list(operands[0])
        try:
            flops = einsum_flops(equation, *(tuple(t.shape) for t in operands))
        except NotImplementedError:  # not understood: let the ATen operators be counted
            return func(*args, **kwargs)
        self.counter._silenced = True
        try:
            out = func(*args, **kwargs)
        finally:
            self.counter._silenced = False
        for parent in set(self.counter.mod_tracker.parents):
            self.counter.flop_counts[parent][torch.ops.aten.einsum] += flops
        return out


def _is_ccnet_edu_op(func_packet: object) -> bool:
    """Whether ``func_packet`` is an operator of the ``ccnet_edu`` namespace."""
    return str(getattr(func_packet, "_qualified_op_name", "")).startswith("ccnet_edu::")


class AttentionFlopCounter(FlopCounterMode):
    """``FlopCounterMode`` taught the fused criss-cross operator and ``einsum``.

    Use it like its parent (``with AttentionFlopCounter() as c: ...;
    c.get_total_flops()``).  Backward passes are counted through the ATen
    operators autograd runs (and the fused operator's backward formula).
    """

    def __init__(self, depth: int | None = None) -> None:
        if depth is not None:
            check_int("depth", depth, minimum=1)
        super().__init__(display=False, depth=depth, custom_mapping=flop_formulas())
        self._silenced = False
        self._einsum_mode = _EinsumMode(self)

    def _count_flops(self, func_packet, out, args, kwargs):  # noqa: ANN001
        if self._silenced:
            return out
        if func_packet not in self.flop_registry and _is_ccnet_edu_op(func_packet):
            # The operator was loaded after this counter was made (a fused module loads it
            # on its first forward, inside the counter): learn its formulas now.
            for op, formula in flop_formulas().items():
                self.flop_registry.setdefault(op, shape_wrapper(formula))
            if func_packet not in self.flop_registry:
                raise RuntimeError(
                    f"no FLOP formula for the operator {func_packet}: "
                    "add one to ccnet_edu.analysis.flops.flop_formulas"
                )
        return super()._count_flops(func_packet, out, args, kwargs)

    def __enter__(self):
        entered = super().__enter__()
        self._einsum_mode.__enter__()
        return entered

    def __exit__(self, *exc):  # noqa: ANN002
        self._einsum_mode.__exit__(*exc)
        return super().__exit__(*exc)


def _run_counter(fn: Callable[..., Any], inputs: tuple, backward: bool) -> FlopCounterMode:
    check_callable("fn", fn)
    check_bool("backward", backward)
    if not inputs:
        raise ValueError("inputs must not be empty: give the tensors fn is called with")
    counter = AttentionFlopCounter()
    with counter:
        if backward:
            out = fn(*inputs)
            out = out[0] if isinstance(out, (tuple, list)) else out
            out.sum().backward()
        else:
            with torch.no_grad():
                fn(*inputs)
    return counter


def count_flops(fn: Callable[..., Any], *inputs: Any, backward: bool = False) -> int:
    """FLOPs of ``fn(*inputs)`` (a module or any callable), as the counter counts them.

    Measured for every PyTorch operator; the fused criss-cross operator, which the
    counter cannot look into, is charged its formula.  Forward only by default
    (under ``torch.no_grad``); ``backward=True`` runs
    ``fn(*inputs).sum().backward()`` and counts both passes.  Works on the
    ``meta`` device, which costs no compute: a 97 x 97 non-local block is
    counted in milliseconds.  Conventions: see the module docstring.
    """
    return int(_run_counter(fn, inputs, backward).get_total_flops())


def flops_by_module(fn: Callable[..., Any], *inputs: Any) -> dict[str, int]:
    """Forward FLOPs per (sub)module, keyed by qualified name (``"Global"`` = total).

    A module's count includes its children's; a module called twice (the
    shared block of RCCA) accumulates both calls.
    """
    counts = _run_counter(fn, inputs, backward=False).get_flop_counts()
    return {name: int(sum(per_op.values())) for name, per_op in counts.items()}


def flops_by_kind(fn: Callable[..., Any], *inputs: Any) -> dict[str, int]:
    """Forward FLOPs split into ``projections`` (convolutions) and ``attention`` (the rest).

    In every attention block of this library the only non-convolution
    operators the counter charges are the energy and aggregation matmuls
    (or the fused operator), so ``attention`` is exactly those.
    """
    counts = _run_counter(fn, inputs, backward=False).get_flop_counts().get("Global", {})
    split = {"projections": 0, "attention": 0}
    for op, flops in counts.items():
        name = getattr(op, "_opname", str(op)).split(".")[-1]
        split["projections" if name in _CONV_OPS else "attention"] += int(flops)
    split["total"] = split["projections"] + split["attention"]
    return split


# ---------------------------------------------------------------------------
# Closed forms (CCNet Sec. 3.2; ISSA Sec. 3; the non-local block, Wang et al. Sec. 3)
# ---------------------------------------------------------------------------


def _check_sizes(**sizes: object) -> None:
    """Every size of a closed form is an int >= 1 (``bool`` and ``float`` refused)."""
    for name, value in sizes.items():
        check_int(name, value, minimum=1)


def cca_flops(
    height: int, width: int, channels: int, qk_channels: int, batch: int = 1
) -> dict[str, int]:
    """Closed-form forward FLOPs of one criss-cross attention block (CCNet, Sec. 3.2).

    ``projections = 2 N C (2 C' + C)`` (three 1x1 convs, bias not counted),
    ``energy = 2 N (H + W - 1) C'``, ``aggregation = 2 N (H + W - 1) C``,
    with ``N = B H W``.  Softmax and the residual are not counted.
    """
    _check_sizes(
        height=height, width=width, channels=channels, qk_channels=qk_channels, batch=batch
    )
    n = batch * height * width
    positions = n * (height + width - 1)
    out = {
        "projections": 2 * n * channels * (2 * qk_channels + channels),
        "energy": 2 * positions * qk_channels,
        "aggregation": 2 * positions * channels,
    }
    out["attention"] = out["energy"] + out["aggregation"]
    out["total"] = out["projections"] + out["attention"]
    return out


def rcca_flops(
    height: int, width: int, channels: int, qk_channels: int, recurrence: int = 2, batch: int = 1
) -> dict[str, int]:
    """Closed-form forward FLOPs of recurrent CCA: ``R`` times one CCA block (CCNet, Sec. 3.3)."""
    _check_sizes(recurrence=recurrence)
    return {
        k: recurrence * v for k, v in cca_flops(height, width, channels, qk_channels, batch).items()
    }


def nonlocal_flops(
    height: int, width: int, channels: int, qk_channels: int, batch: int = 1
) -> dict[str, int]:
    """Closed-form forward FLOPs of the book's comparison non-local block (Wang et al., Sec. 3).

    Same projections as CCA, but every pixel attends to all ``N = H W``:
    ``energy = 2 B N^2 C'``, ``aggregation = 2 B N^2 C``.
    """
    _check_sizes(
        height=height, width=width, channels=channels, qk_channels=qk_channels, batch=batch
    )
    n = height * width
    out = {
        "projections": 2 * batch * n * channels * (2 * qk_channels + channels),
        "energy": 2 * batch * n * n * qk_channels,
        "aggregation": 2 * batch * n * n * channels,
    }
    out["attention"] = out["energy"] + out["aggregation"]
    out["total"] = out["projections"] + out["attention"]
    return out


def axial_flops(
    height: int, width: int, channels: int, qk_channels: int, batch: int = 1
) -> dict[str, int]:
    """Closed-form forward FLOPs of axial attention, two passes (Ho et al.; Axial-DeepLab).

    Each pass has CCA's three projections, ``2 N C (2 C' + C)``; the height pass
    scores ``H`` keys per pixel, the width pass ``W``: ``energy = 2 N (H + W) C'``,
    ``aggregation = 2 N (H + W) C``, with ``N = B H W``.  Softmax, the residual and
    the optional positional terms are not counted.
    """
    _check_sizes(
        height=height, width=width, channels=channels, qk_channels=qk_channels, batch=batch
    )
    n = batch * height * width
    positions = n * (height + width)
    out = {
        "projections": 2 * 2 * n * channels * (2 * qk_channels + channels),
        "energy": 2 * positions * qk_channels,
        "aggregation": 2 * positions * channels,
    }
    out["attention"] = out["energy"] + out["aggregation"]
    out["total"] = out["projections"] + out["attention"]
    return out


def issa_flops(
    height: int,
    width: int,
    channels: int,
    block_size: tuple[int, int] = (8, 8),
    key_channels: int | None = None,
    value_channels: int | None = None,
    batch: int = 1,
) -> dict[str, int]:
    """Closed-form forward FLOPs of :class:`~ccnet_edu.issa.InterlacedSparseSelfAttention`.

    Both steps run on the padded grid of ``N' = H' W'`` positions and each
    has its own projections, as in the authors' code: query and key are two
    1x1 convolutions each (``C -> C' -> C'``), the value one (``C -> C_v``)
    and the output projection one (``C_v -> C``); convolutions without bias,
    BN and ReLU not counted.  Per step and position that is
    ``2 (2 C C' + 2 C'^2 + C C_v + C_v C)``.  The long step attends within
    groups of ``Q_h Q_w`` positions, the short step within blocks of
    ``P_h P_w``: ``attention = 2 N' (Q_h Q_w + P_h P_w) (C' + C_v)``.
    The output channels are ``C`` (the module's default), so both steps have
    the same projections.
    """
    _check_sizes(height=height, width=width, channels=channels, batch=batch)
    p_h, p_w = check_positive_pair("block_size", block_size)
    for name, value in (("key_channels", key_channels), ("value_channels", value_channels)):
        if value is not None:
            check_int(name, value, minimum=1)
    key_channels = key_channels or max(channels // 2, 1)
    value_channels = value_channels or channels
    q_h, q_w = math.ceil(height / p_h), math.ceil(width / p_w)
    n = batch * (q_h * p_h) * (q_w * p_w)
    per_step_projections = (
        2
        * n
        * (
            2 * channels * key_channels  # first query and key layers, C -> C'
            + 2 * key_channels * key_channels  # second query and key layers, C' -> C'
            + 2 * channels * value_channels  # value C -> C_v and output projection C_v -> C
        )
    )
    out = {
        "projections": 2 * per_step_projections,
        "energy": 2 * n * (q_h * q_w + p_h * p_w) * key_channels,
        "aggregation": 2 * n * (q_h * q_w + p_h * p_w) * value_channels,
    }
    out["attention"] = out["energy"] + out["aggregation"]
    out["total"] = out["projections"] + out["attention"]
    return out


def duplicate_centre_flops(
    height: int, width: int, qk_channels: int, value_channels: int, batch: int = 1
) -> int:
    """FLOPs the readable CCA spends on the centre a second time: ``2 B H W (C' + C)``.

    ``2 B H W C'`` for the centre energy computed in the column too, and
    ``2 B H W C`` for the column aggregation's zero-weight centre term.  See the
    module docstring; measured(reference) = closed form + this, per loop.
    """
    _check_sizes(
        height=height,
        width=width,
        qk_channels=qk_channels,
        value_channels=value_channels,
        batch=batch,
    )
    return 2 * batch * height * width * (qk_channels + value_channels)
