"""Measuring memory: what autograd keeps, and the peak of a training step.

Two different questions, two measurements.

**Saved for backward** (:func:`saved_tensors`).  Autograd keeps some tensors
of the forward pass alive until the backward pass uses them: the inputs of a
matmul, the output of a softmax, ...  :func:`torch.autograd.graph.saved_tensors_hooks`
calls a hook for every tensor saved; we record each one and count each
*storage* once (a view and its base, or a tensor saved by two operators,
share one allocation).  This is exact and device independent, so it also
runs on the ``meta`` device at the paper's full size for free.

**Peak during forward + backward** (:func:`peak_memory`), above what was
already allocated before the call, measured by
:func:`ccnet_edu.measure.peak_memory_of` (the benchmark of the fused operator
uses the same function):

* on CUDA, from the caching allocator's statistics
  (``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``):
  every byte handed out to tensors, including kernel workspaces that go
  through the allocator; not the allocator's cached-but-free reserve;
* on the CPU (and ``meta``), by *storage tracking*: a
  :class:`~torch.utils._python_dispatch.TorchDispatchMode` sees every ATen
  operator of both passes, adds the size of each new storage an operator
  returns and subtracts it when the storage is freed (a ``weakref.finalize``
  on the storage).  The live total over time is a real measurement of the
  tensor allocations the program makes.  Its limits: temporaries a kernel
  allocates *inside* one operator and frees before returning (workspaces of
  a fused operator, oneDNN/BLAS scratch buffers) are invisible; so are
  allocator caching and fragmentation and Python objects.  The CPU
  allocator frees immediately, so for PyTorch-level code the tracked peak
  matches the allocator's own event log; :func:`peak_memory` with
  ``method="profiler"`` reconstructs that log from
  ``torch.profiler(profile_memory=True)`` as a cross-check (it also sees
  allocations inside kernels).

No formula stands in for either measurement; :func:`attention_map_bytes`
gives the textbook sizes to print *beside* them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .._checks import check_bool, check_callable, check_choice, check_int, check_positive_pair
from ..measure import PEAK_METHODS, PeakMemory, StorageTracker, _storage_key, peak_memory_of

__all__ = [
    "SavedTensor",
    "SavedTensors",
    "saved_tensors",
    "saved_bytes",
    "PeakMemory",
    "peak_memory",
    "StorageTracker",
    "MAP_KINDS",
    "attention_map_bytes",
]


def _with_grad_inputs(inputs: tuple) -> tuple:
    # Inputs are treated as activations of a larger network: they require grad.
    return tuple(
        x.detach().requires_grad_(True)
        if isinstance(x, torch.Tensor) and x.dtype.is_floating_point
        else x
        for x in inputs
    )


def _first_tensor(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


# ---------------------------------------------------------------------------
# Saved for backward
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedTensor:
    """One storage autograd keeps for the backward pass."""

    shape: tuple[int, ...]  # shape of the first tensor saved from this storage
    dtype: torch.dtype
    nbytes: int  # bytes of the whole storage
    kind: str  # "input", "parameter" or "activation"


@dataclass
class SavedTensors:
    """Everything saved for backward by one forward pass, each storage once."""

    tensors: list[SavedTensor] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def bytes_of(self, kind: str) -> int:
        """Bytes of one kind: ``"input"``, ``"parameter"`` or ``"activation"``."""
        check_choice("kind", kind, _KINDS)
        return sum(t.nbytes for t in self.tensors if t.kind == kind)


_KINDS = ("input", "parameter", "activation")


def _check_fn_inputs(fn: object, inputs: tuple) -> None:
    check_callable("fn", fn)
    if not inputs:
        raise ValueError("inputs must not be empty: give the tensors fn is called with")


def saved_tensors(fn: Callable[..., Any], *inputs: Any) -> SavedTensors:
    """Run ``fn(*inputs)`` with grad and record every storage saved for backward.

    Floating-point tensor inputs are detached copies that require grad (as
    a feature map inside a network would).  Each storage counts once, with
    its full size.  Parameters of ``fn`` (when it is a module) and the inputs
    are labelled, so ``bytes_of("activation")`` is the memory a block adds.
    """
    _check_fn_inputs(fn, inputs)
    inputs = _with_grad_inputs(inputs)
    parameters = (
        {_storage_key(p) for p in fn.parameters()} if isinstance(fn, torch.nn.Module) else set()
    )
    input_keys = {_storage_key(x) for x in inputs if isinstance(x, torch.Tensor)}
    seen: dict[int, SavedTensor] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in seen:
            kind = (
                "parameter" if key in parameters else "input" if key in input_keys else "activation"
            )
            seen[key] = SavedTensor(
                tuple(tensor.shape), tensor.dtype, tensor.untyped_storage().nbytes(), kind
            )
        return tensor  # keep autograd's normal behaviour

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)  # the graph (and every saved storage) stays alive until we return
    del out
    return SavedTensors(list(seen.values()))


def saved_bytes(fn: Callable[..., Any], *inputs: Any, kind: str | None = None) -> int:
    """Bytes saved for backward by ``fn(*inputs)``; ``kind`` restricts to one label."""
    if kind is not None:
        check_choice("kind", kind, _KINDS)
    report = saved_tensors(fn, *inputs)
    return report.total_bytes if kind is None else report.bytes_of(kind)


# ---------------------------------------------------------------------------
# Peak memory
# ---------------------------------------------------------------------------


def _step(fn: Callable[..., Any], inputs: tuple, backward: bool) -> None:
    out = _first_tensor(fn(*inputs))
    if backward:
        out.sum().backward()  # dL/dy = 1 everywhere
    del out


def _clear_grads(fn: Callable[..., Any], inputs: tuple) -> None:
    if isinstance(fn, torch.nn.Module):
        for p in fn.parameters():
            p.grad = None
    for x in inputs:
        if isinstance(x, torch.Tensor):
            x.grad = None


def peak_memory(
    fn: Callable[..., Any],
    *inputs: Any,
    backward: bool = True,
    method: str = "auto",
    record: bool = False,
) -> PeakMemory:
    """Peak memory of ``fn(*inputs)`` [+ ``.sum().backward()``], above the starting point.

    Args:
        fn: a module or callable; its parameters' ``.grad`` are cleared first
            (and the gradients it creates are part of the peak).
        inputs: floating-point tensors become detached copies requiring grad.
        backward: include the backward pass.
        method: ``"auto"`` (CUDA allocator on CUDA, storage tracking elsewhere),
            ``"tracking"``, ``"cuda"`` or ``"profiler"`` (CPU allocator event log).
        record: keep the ``(operator, live bytes)`` timeline (tracking only).

    See the module docstring for what each method sees and misses.
    """
    _check_fn_inputs(fn, inputs)
    check_bool("backward", backward)
    check_bool("record", record)
    if method not in PEAK_METHODS:
        raise ValueError(f"method must be 'auto', 'tracking', 'cuda' or 'profiler', got {method!r}")
    inputs = _with_grad_inputs(inputs)
    device = next((x.device for x in inputs if isinstance(x, torch.Tensor)), torch.device("cpu"))
    if method == "cuda" and device.type != "cuda":
        raise ValueError(f"method='cuda' needs CUDA inputs, got inputs on {device}")
    _clear_grads(fn, inputs)
    peak = peak_memory_of(lambda: _step(fn, inputs, backward), device, method, record)
    _clear_grads(fn, inputs)
    return peak


# ---------------------------------------------------------------------------
# Textbook sizes, for comparison only
# ---------------------------------------------------------------------------


#: The kinds of :func:`attention_map_bytes`.
MAP_KINDS = ("dense", "criss_cross", "issa", "axial")


def attention_map_bytes(
    kind: str,
    height: int,
    width: int,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    block_size: tuple[int, int] = (8, 8),
) -> int:
    """Bytes of one attention map: ``"dense"`` N², ``"criss_cross"`` N (H+W-1),
    ``"issa"`` N' (Q_h Q_w + P_h P_w) (both steps, padded grid), ``"axial"``
    N (H + W) (both passes).

    A formula, shown *beside* the measurements, never instead of them.
    """
    check_choice("kind", kind, MAP_KINDS)
    height = check_int("height", height, minimum=1)
    width = check_int("width", width, minimum=1)
    batch = check_int("batch", batch, minimum=1)
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
    block_size = check_positive_pair("block_size", block_size)
    itemsize = torch.empty((), dtype=dtype, device="meta").element_size()
    n = height * width
    if kind == "dense":
        values = n * n
    elif kind == "criss_cross":
        values = n * (height + width - 1)
    elif kind == "axial":
        values = n * (height + width)
    elif kind == "issa":
        p_h, p_w = block_size
        q_h, q_w = math.ceil(height / p_h), math.ceil(width / p_w)
        values = q_h * p_h * q_w * p_w * (q_h * q_w + p_h * p_w)
    else:
        raise ValueError(f"kind must be one of {MAP_KINDS}, got {kind!r}")
    return batch * values * itemsize
