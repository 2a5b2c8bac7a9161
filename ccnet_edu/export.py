"""Deployment: the attention modules exported to ONNX and checked in onnxruntime.

Every module of this library is plain tensor algebra (1x1 convolutions,
``einsum``, ``gather``/``scatter``, ``softmax``), so PyTorch's exporter can
trace it into standard ONNX operators.  The one exception is the fused
criss-cross operator, ``torch.ops.ccnet_edu.criss_cross_attention``
(``impl="fused"``, or ``"auto"`` when the operator is available): ONNX has no
such operator and the exporter stops with *No ONNX function found*.  It is
lowered here by a **decomposition**: every call of the fused operator in the
traced graph is replaced by the readable implementation,
:func:`ccnet_edu.functional.criss_cross_attention_reference`, which computes
the same ``(out, attention)``.  One source of truth: the ONNX graph of a fused
model is the graph of the reference.

The route, in three public PyTorch steps:

1. :func:`torch.export.export` traces the module (eval mode) into an
   :class:`~torch.export.ExportedProgram`, with batch, height and width
   dynamic (``Dim.AUTO``: the exporter finds the valid range itself, e.g.
   ``H >= 3`` for criss-cross attention, whose column part has ``H - 1``
   entries);
2. :meth:`ExportedProgram.run_decompositions` with ``{fused operator:
   reference}`` removes the custom operator (only when the graph holds it);
3. :func:`torch.onnx.export` (the dynamo exporter, PyTorch's default) turns
   the program into ONNX.

:func:`to_onnx` does all three, runs the result in onnxruntime (CPU provider)
and compares it with PyTorch.  The legacy TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``) is deprecated and not used.

onnx, onnxruntime and onnxscript (which ``torch.onnx`` needs) come with the
``export`` extra: ``pip install "ccnet-edu[export]"``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from ._checks import MAX_THREADS, check_bool, check_float, check_int, check_writable
from ._io import atomic_write_bytes
from .functional import criss_cross_attention_reference

if TYPE_CHECKING:  # the optional dependencies are imported where they are used
    import onnxruntime

__all__ = [
    "Check",
    "OnnxExport",
    "decompositions",
    "dynamic_shapes",
    "export_program",
    "fused_ops_in",
    "onnx_session",
    "quiet_exporter",
    "to_onnx",
    "with_impl",
]

_EXTRA_HINT = 'install the export extra: pip install "ccnet-edu[export]"'


def _require(module: str) -> Any:
    """Import an optional dependency, or say which extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"ccnet_edu.export needs {module}: {_EXTRA_HINT}") from err


# --------------------------------------------------------------------------- decomposition


def decompositions() -> dict[torch._ops.OpOverload, Callable[..., Any]]:
    """The decomposition table of the fused operator: ``{op: reference}``.

    ``torch.ops.ccnet_edu.criss_cross_attention(query, key, value)`` returns
    ``(out, attention)``, as :func:`~ccnet_edu.functional.criss_cross_attention_reference`
    does, so the reference replaces it node for node.  The table is empty when
    the operator was never loaded: then no traced graph can contain it.
    """
    try:
        op = torch.ops.ccnet_edu.criss_cross_attention.default
    except AttributeError:  # the C++ library is not loaded in this process
        return {}
    return {op: criss_cross_attention_reference}


def fused_ops_in(program: torch.export.ExportedProgram) -> list[str]:
    """Names of the ``ccnet_edu`` custom operators that ``program``'s graph still calls."""
    if not isinstance(program, torch.export.ExportedProgram):
        raise TypeError(
            f"program must be a torch.export.ExportedProgram, got {type(program).__name__}"
        )
    return sorted(
        {
            str(node.target)
            for node in program.graph.nodes
            if isinstance(node.target, torch._ops.OpOverload)
            and node.target.namespace == "ccnet_edu"
        }
    )


# --------------------------------------------------------------------------- tracing


def _as_args(example: Any, name: str = "example") -> tuple[Any, ...]:
    """A tuple is the positional arguments; anything else is the single argument."""
    args = example if isinstance(example, tuple) else (example,)
    if not any(isinstance(leaf, torch.Tensor) for leaf in pytree.tree_leaves(args)):
        raise TypeError(
            f"{name} must be a tensor, or a tuple of positional arguments holding tensors "
            f"(e.g. (x,) or ([f1, f2, f3, f4],)), got {type(example).__name__}"
        )
    return args


def _check_dynamic(dynamic: object) -> None:
    if not isinstance(dynamic, (bool, dict, tuple, list)) and dynamic is not None:
        raise TypeError(
            "dynamic must be True, False or a dynamic_shapes spec (dict, tuple or list), "
            f"got {type(dynamic).__name__}"
        )


def dynamic_shapes(example: Any) -> tuple[Any, ...]:
    """Dynamic batch, height and width for every 4-D tensor of ``example``; others static.

    Uses ``torch.export.Dim.AUTO``: the exporter decides which sizes may vary
    and over which range (see ``ExportedProgram.range_constraints``), and
    relates the sizes of several inputs by itself (the batch of the four
    stages of an SA head is one size).
    """
    auto = torch.export.Dim.AUTO

    def spec(leaf: Any) -> dict[int, Any] | None:
        if isinstance(leaf, torch.Tensor) and leaf.dim() == 4:
            return {0: auto, 2: auto, 3: auto}  # (B, C, H, W): C is fixed by the weights
        return None

    return pytree.tree_map(spec, _as_args(example))


def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(
            "model must be in eval() mode: a traced model in training mode keeps its "
            "dropout and BatchNorm batch statistics; call model.eval() first "
            f"(in training mode: {', '.join(training[:3])}"
            f"{', ...' if len(training) > 3 else ''})"
        )
    return model


def export_program(
    model: nn.Module, example: Any, *, dynamic: bool | Any = True
) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` (eval mode) with the fused operator decomposed.

    Args:
        model: the module, in ``eval()`` mode.
        example: example input: a tensor, or a tuple of positional arguments.
        dynamic: ``True`` (dynamic B, H, W: :func:`dynamic_shapes`), ``False``
            (every size fixed to the example's), or a ``dynamic_shapes`` spec
            passed to :func:`torch.export.export` as it is.

    Returns:
        An :class:`~torch.export.ExportedProgram` whose graph calls no
        ``ccnet_edu`` operator; ``program.module()`` runs it in PyTorch.
    """
    model = _check_model(model)
    args = _as_args(example)
    if dynamic is True:
        shapes = dynamic_shapes(args)
    elif dynamic is False or dynamic is None:
        shapes = None
    else:
        shapes = dynamic
    program = torch.export.export(model, args, dynamic_shapes=shapes)
    table = decompositions()
    if fused_ops_in(program):
        # Replace each call of the fused operator by the reference implementation.
        program = program.run_decompositions(table)
    left = fused_ops_in(program)
    if left:  # e.g. the backward or the portable operator: they have no decomposition here
        raise RuntimeError(f"no decomposition for {left}: the graph cannot leave PyTorch")
    return program


def with_impl(model: nn.Module, impl: str) -> nn.Module:
    """A deep copy of ``model`` whose criss-cross attention blocks all use ``impl``.

    Useful for a trained model built with the default ``impl="reference"``:
    ``with_impl(model, "fused")`` runs the same weights through the C++ operator.

    Raises:
        ValueError: ``impl`` is not one of ``"reference"``, ``"fused"``, ``"auto"``,
            or the model has no :class:`~ccnet_edu.cca.CrissCrossAttention`.
    """
    from .cca import CrissCrossAttention, _check_impl

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    impl = _check_impl(impl)
    copied = copy.deepcopy(model)
    blocks = [m for m in copied.modules() if isinstance(m, CrissCrossAttention)]
    if not blocks:
        raise ValueError(f"model has no CrissCrossAttention module ({type(model).__name__})")
    for block in blocks:
        block.impl = impl
    return copied


# --------------------------------------------------------------------------- onnxruntime


def onnx_session(
    model: str | Path | bytes, threads: int | None = None
) -> onnxruntime.InferenceSession:
    """An onnxruntime session on the CPU provider for an ONNX file (or its bytes).

    ``threads`` sets onnxruntime's intra-op threads (its default: one per core), at most
    :data:`~ccnet_edu._checks.MAX_THREADS`.
    """
    if not isinstance(model, (str, Path, bytes)):
        raise TypeError(
            f"model must be an ONNX file path (str or Path) or its bytes, got "
            f"{type(model).__name__}"
        )
    if threads is not None:
        threads = check_int("threads", threads, minimum=1, maximum=MAX_THREADS)
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Check:
    """One comparison of onnxruntime against PyTorch on one input.

    ``max_rel_diff`` is ``max |onnx - torch| / max |torch|`` for each output
    (relative to the output's scale, so that entries near zero do not blow it
    up), the largest over the outputs.
    """

    shapes: tuple[tuple[int, ...], ...]  # the input tensors' shapes
    max_abs_diff: float
    max_rel_diff: float


@dataclass
class OnnxExport:
    """What :func:`to_onnx` returns: the ONNX program, its session and the checks."""

    program: Any  # torch.onnx.ONNXProgram
    exported_program: torch.export.ExportedProgram
    session: Any  # onnxruntime.InferenceSession
    path: Path | None
    # The sizes the exported graph is valid for, e.g. {"height": (3, None)}: the
    # exporter's range constraints.  ONNX does not carry them (nor the library's
    # input checks): a size outside them runs, but is not guaranteed correct.
    dynamic_ranges: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        return max(c.max_abs_diff for c in self.checks)

    @property
    def max_rel_diff(self) -> float:
        return max(c.max_rel_diff for c in self.checks)

    @property
    def input_shapes(self) -> list[list[int | str]]:
        """Each ONNX input's shape; a dynamic size is a name (e.g. ``"s53"``)."""
        return [list(i.shape) for i in self.session.get_inputs()]

    def run(self, *args: Any) -> list[torch.Tensor]:
        """Run the ONNX model in onnxruntime on the model's arguments; outputs flattened."""
        leaves = [t for t in pytree.tree_leaves(args) if isinstance(t, torch.Tensor)]
        names = [i.name for i in self.session.get_inputs()]
        if len(leaves) != len(names):
            raise ValueError(f"the ONNX model takes {len(names)} tensors, got {len(leaves)}")
        feed = {n: t.detach().cpu().numpy() for n, t in zip(names, leaves, strict=True)}
        return [torch.from_numpy(o) for o in self.session.run(None, feed)]

    def as_module(self) -> nn.Module:
        """The ONNX model behind the ``nn.Module`` interface (inference only, CPU tensors).

        It returns what the PyTorch model returns when that is one tensor, else
        the list of flattened outputs; e.g. ``train.evaluate(result.as_module())``
        measures the deployed model with the code that measured the trained one.
        """
        return _OnnxModule(self)

    def compare(self, model: nn.Module, *args: Any) -> Check:
        """Run ``model`` and the ONNX model on ``args``; the largest differences."""
        with torch.no_grad():
            expected = [t for t in pytree.tree_leaves(model(*args)) if isinstance(t, torch.Tensor)]
        actual = self.run(*args)
        if len(actual) != len(expected):
            raise ValueError(f"{len(actual)} ONNX outputs for {len(expected)} PyTorch outputs")
        abs_diff = rel_diff = 0.0
        for a, e in zip(actual, expected, strict=True):
            e = e.detach().cpu().double()
            if a.shape != e.shape:
                raise ValueError(
                    f"ONNX output of shape {tuple(a.shape)}, expected {tuple(e.shape)}"
                )
            diff = float((a.double() - e).abs().max()) if e.numel() else 0.0
            scale = float(e.abs().max()) if e.numel() else 0.0
            abs_diff = max(abs_diff, diff)
            rel_diff = max(rel_diff, diff / scale if scale > 0 else diff)
        shapes = tuple(
            tuple(t.shape) for t in pytree.tree_leaves(args) if isinstance(t, torch.Tensor)
        )
        return Check(shapes, abs_diff, rel_diff)


class _OnnxModule(nn.Module):
    def __init__(self, exported: OnnxExport) -> None:
        super().__init__()
        self.exported = exported

    def forward(self, *args: Any) -> torch.Tensor | list[torch.Tensor]:
        outputs = self.exported.run(*args)
        return outputs[0] if len(outputs) == 1 else outputs


def _name_axes(onnx_program: Any, args: tuple[Any, ...]) -> dict[str, str]:
    """Name the dynamic sizes of 4-D inputs ``batch``, ``height``, ``width`` (not ``s53``).

    With several inputs the names get the input's index (``height_2``); a size
    that several inputs share (the batch) keeps the name of its first input.
    """
    leaves = [t for t in pytree.tree_leaves(args) if isinstance(t, torch.Tensor)]
    suffix = (lambda k: "") if len(leaves) == 1 else (lambda k: f"_{k}")
    names: dict[str, str] = {}
    for k, (value, leaf) in enumerate(zip(onnx_program.model.graph.inputs, leaves, strict=True)):
        if leaf.dim() != 4:
            continue
        for axis, base in ((0, "batch"), (2, "height"), (3, "width")):
            symbol = value.shape[axis]
            symbol = None if isinstance(symbol, int) else getattr(symbol, "value", None)
            if isinstance(symbol, str) and symbol not in names:
                names[symbol] = base + suffix(k)
    if names:
        onnx_program.rename_axes(names)
    return names


def _ranges(
    program: torch.export.ExportedProgram, names: dict[str, str]
) -> dict[str, tuple[int, int | None]]:
    """``{axis name: (min, max)}`` of the sizes the exporter allows (max ``None``: unbounded)."""
    ranges = {}
    for symbol, bounds in program.range_constraints.items():
        if str(symbol) in names:
            upper = bounds.upper
            ranges[names[str(symbol)]] = (
                int(bounds.lower),
                int(upper) if upper.is_Integer else None,  # torch.export writes int_oo
            )
    return dict(sorted(ranges.items()))


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Within this context, silence one exporter message that concerns no model of this library.

    Each ``torch.onnx.export`` builds its operator registry and logs a warning
    for every torchvision operator it cannot register when torchvision is not
    installed; this library neither needs nor uses torchvision.  Only that
    logger is raised to ERROR, and only during the export.
    """
    registry_logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_logger.level
    registry_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        registry_logger.setLevel(level)


def to_onnx(
    model: nn.Module,
    example: Any,
    path: str | Path | None = None,
    *,
    check_inputs: Sequence[Any] = (),
    dynamic: bool | Any = True,
    rtol: float | None = 1e-4,
    threads: int | None = None,
    optimize: bool = True,
) -> OnnxExport:
    """Export ``model`` to ONNX, run it in onnxruntime and compare it with PyTorch.

    Args:
        model: the module, in ``eval()`` mode; any ``impl`` (the fused
            operator is decomposed, see the module docstring).
        example: example input: a tensor, or a tuple of positional arguments.
        path: where to save the ``.onnx`` file; ``None`` keeps it in memory.
        check_inputs: more inputs (each like ``example``) to compare on, e.g.
            other sizes, run through the same ONNX model.
        dynamic: see :func:`export_program`.
        rtol: the largest relative difference (:class:`Check`) accepted; the
            export raises beyond it.  ``None`` only reports.
        threads: onnxruntime intra-op threads (default: its own choice), at most
            :data:`~ccnet_edu._checks.MAX_THREADS`.
        optimize: let ``torch.onnx`` optimise the ONNX graph (constant folding,
            removal of redundant shape operations).

    Returns:
        An :class:`OnnxExport`: ``max_abs_diff``/``max_rel_diff`` over
        ``example`` and every ``check_inputs`` entry, ``checks`` one by one.

    Every argument is checked before anything is traced (``path`` too: it must be
    writable; the file is written atomically, so a failed save leaves an old file whole).

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: ``model`` is in training mode, ``path`` cannot be written, ``rtol`` or
            ``threads`` is out of range, or onnxruntime's output differs from PyTorch's by
            more than ``rtol``.
        ImportError: onnx, onnxruntime or onnxscript is not installed.
    """
    _check_model(model)
    _as_args(example)
    if path is not None:
        path = check_writable("path", path)
    if isinstance(check_inputs, (str, bytes)) or not isinstance(check_inputs, Sequence):
        raise TypeError(
            f"check_inputs must be a list or tuple of inputs, got {type(check_inputs).__name__}"
        )
    for k, inputs in enumerate(check_inputs):
        _as_args(inputs, f"check_inputs[{k}]")
    _check_dynamic(dynamic)
    if rtol is not None:
        rtol = check_float("rtol", rtol, minimum=0.0, exclusive_minimum=True)
    if threads is not None:
        threads = check_int("threads", threads, minimum=1, maximum=MAX_THREADS)
    check_bool("optimize", optimize)
    onnx = _require("onnx")
    _require("onnxscript")  # torch.onnx's dynamo exporter translates with it
    program = export_program(model, example, dynamic=dynamic)
    with quiet_exporter():
        onnx_program = torch.onnx.export(program, verbose=False, optimize=optimize)
    ranges = _ranges(program, _name_axes(onnx_program, _as_args(example)))
    proto = onnx_program.model_proto
    onnx.checker.check_model(proto)  # a well-formed graph, before any runtime sees it
    serialized = proto.SerializeToString()  # weights included (no external data)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, serialized)  # a failed save leaves the old file whole
    session = onnx_session(serialized, threads)
    result = OnnxExport(onnx_program, program, session, path, ranges)
    for inputs in (example, *check_inputs):
        result.checks.append(result.compare(model, *_as_args(inputs)))
    if rtol is not None and result.max_rel_diff > rtol:
        worst = max(result.checks, key=lambda c: c.max_rel_diff)
        raise ValueError(
            f"onnxruntime differs from PyTorch by {worst.max_rel_diff:.3g} relative "
            f"(max abs {worst.max_abs_diff:.3g}) on inputs of shape {worst.shapes}, "
            f"more than rtol={rtol:g}"
        )
    return result
