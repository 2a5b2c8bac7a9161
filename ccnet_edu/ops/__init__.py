"""The accelerated criss-cross attention operator, ``torch.ops.ccnet_edu``.

C++/CUDA kernels in ``csrc/`` (built on first use, see :mod:`ccnet_edu.ops._build`)
registered as ``torch.library`` custom operators, with their fake (meta) kernels
and autograd formulas registered here, so the operator works with
``torch.compile`` and passes ``torch.library.opcheck``.

Operators (namespace ``ccnet_edu``):

* ``criss_cross_attention(query, key, value) -> (out, attention)``;
* ``criss_cross_attention_backward(grad_out, grad_attention?, attention, query, key, value)
  -> (grad_query, grad_key, grad_value)``;
* ``portable_criss_cross_attention[_backward]``: the portable element bodies
  (``csrc/cca_common.h``), one element per loop iteration on the CPU and one thread
  per element on CUDA, where they are the oracle of the tiled line kernels that
  ``criss_cross_attention`` runs there.  CPU tests check their arithmetic from the
  same source, and the tiled kernels' bodies through a CPU emulation; they do not
  check what nvcc makes of them, the launches or the streams: that needs a GPU.

The CPU library is built for an explicit ISA level, cached by content and
self-tested against the readable reference when it is loaded (:func:`self_test`);
see :mod:`ccnet_edu.ops._build`.

Layouts: ``out`` is (B, C, H, W) stored channels-last (``torch.channels_last``
strides: the kernels work on per-pixel vectors); ``attention`` is
(B, H, W, H+W-1) in the layout of :mod:`ccnet_edu.functional`; the gradients
of the backward have the layouts of query, key and value.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator

import torch

from .._checks import check_bool, check_choice, check_device, check_str
from ._build import (
    BuildError,
    BuildInfo,
    build_dir,
    csrc_dir,
    find_nvcc,
    load_cpu,
    load_cuda,
    select_isa,
    supported_isas,
)

__all__ = [
    "BuildError",
    "BuildInfo",
    "build_dir",
    "criss_cross_attention",
    "csrc_dir",
    "find_nvcc",
    "is_available",
    "load",
    "MEASURED_FASTER",
    "MEASURED_FASTER_ISAS",
    "select_isa",
    "self_test",
    "supported_isas",
    "usable_for",
]

# device type -> BuildInfo (loaded and verified) or BuildError (cannot); absent = not tried yet
_state: dict[str, BuildInfo | BuildError] = {}
_warned: set[str] = set()


@contextlib.contextmanager
def _outside_any_trace() -> Iterator[None]:
    """Real tensors and no recording, even inside a trace.

    The operator's first use may come while ``torch.export`` or ``make_fx`` traces a
    model: loading and :func:`self_test` must then run on real tensors, and none of
    the self-test's operations may be recorded into the traced graph.
    """
    from torch.utils._python_dispatch import _disable_current_modes

    # enable_grad: the self-test runs a backward, also when the first use is under no_grad.
    with torch._C.DisableTorchFunction(), _disable_current_modes(), torch.enable_grad():
        yield


def _constant_under_compile(fn):
    """``torch.compiler.assume_constant_result(fn)`` without importing ``torch._dynamo``.

    That decorator only marks the function (Dynamo then calls it at trace time and puts
    its result into the graph as a constant), but importing it would load all of Dynamo
    with this package; the mark is set directly.  ``tests/test_ops_compile.py`` compiles
    every impl in a fresh process, so a renamed mark fails there.
    """
    fn._dynamo_marked_constant = True
    return fn


def _try(kind: str, verbose: bool = False) -> BuildInfo | BuildError:
    if kind not in _state:
        with _outside_any_trace():
            _state[kind] = _load_and_test(kind, verbose)
    return _state[kind]


def _load_and_test(kind: str, verbose: bool) -> BuildInfo | BuildError:
    seconds: list[float] = []

    def check() -> str:
        """Runs right after the library is loaded, before it is recorded as verified."""
        if kind == "cpu":
            _register_python_side()
        elif not torch.cuda.is_available():
            return "not run: no GPU"
        start = time.perf_counter()
        self_test(kind)
        seconds.append(time.perf_counter() - start)
        return "passed"

    try:
        info = load_cpu(verbose, check) if kind == "cpu" else load_cuda(verbose, check)
    except BuildError as error:
        return error
    if seconds:
        info.extra["self_test_seconds"] = seconds[0]
        info.seconds = max(0.0, info.seconds - seconds[0])  # build and load only
    return info


# Self-test cases: (B, C', C, H, W), odd and non-square, batch 2.
_SELF_TEST_SHAPES = ((2, 3, 5, 5, 7), (2, 4, 9, 7, 3))
_SELF_TEST_TOL = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-10, 1e-12)}
_SELF_TEST_NAMES = ("out", "attention", "grad_query", "grad_key", "grad_value")


def _forward_backward(fn, tensors, dtype, device) -> list[torch.Tensor]:
    """``fn(query, key, value)`` and its backward from (grad_out, grad_attention), in float64."""
    query, key, value, grad_out, grad_attention = (t.to(device, dtype, copy=True) for t in tensors)
    leaves = [t.requires_grad_() for t in (query, key, value)]
    out, attention = fn(*leaves)
    torch.autograd.backward((out, attention), (grad_out, grad_attention))
    results = [out.detach(), attention.detach()] + [t.grad for t in leaves]
    return [t.double().cpu() for t in results]


def self_test(device_type: str = "cpu") -> None:
    """Check a freshly loaded library against the readable reference.

    A tiny forward and backward (both outputs, with an attention gradient) in
    float32 and float64, at odd, non-square sizes with batch 2, on ``device_type``,
    against :func:`ccnet_edu.functional.criss_cross_attention_reference` in
    float64 on the CPU.  A compiler that miscompiled the library (a wrong dtype,
    wrong arithmetic) is caught here, before ``impl="auto"`` trusts it.

    Raises:
        BuildError: an output or gradient differs, or the operator raised.
    """
    check_choice("device_type", check_str("device_type", device_type), ("cpu", "cuda"))
    from ..functional import criss_cross_attention_reference

    generator = torch.Generator().manual_seed(0)
    for batch, qk_channels, channels, height, width in _SELF_TEST_SHAPES:
        sizes = [  # query, key, value, grad_out, grad_attention
            (batch, qk_channels, height, width),
            (batch, qk_channels, height, width),
            (batch, channels, height, width),
            (batch, channels, height, width),
            (batch, height, width, height + width - 1),
        ]
        tensors = [torch.randn(size, dtype=torch.float64, generator=generator) for size in sizes]
        expected = _forward_backward(criss_cross_attention_reference, tensors, torch.float64, "cpu")
        for dtype, (rtol, atol) in _SELF_TEST_TOL.items():
            case = f"{device_type}, {dtype}, (B, C', C, H, W) = {sizes[0][:2] + sizes[2][1:]}"
            try:
                got = _forward_backward(
                    torch.ops.ccnet_edu.criss_cross_attention, tensors, dtype, device_type
                )
            except Exception as error:  # the library is unusable: say how it failed
                first_line = (str(error).splitlines() or [""])[0]
                raise BuildError(
                    f"self-test failed ({case}): {type(error).__name__}: {first_line}"
                ) from error
            for name, g, e in zip(_SELF_TEST_NAMES, got, expected, strict=True):
                if g.shape != e.shape:
                    raise BuildError(
                        f"self-test failed ({case}): {name} has shape {tuple(g.shape)}, "
                        f"expected {tuple(e.shape)}"
                    )
                if not torch.allclose(g, e, rtol=rtol, atol=atol):
                    raise BuildError(
                        f"self-test failed ({case}): {name} differs from the reference by up "
                        f"to {(g - e).abs().max().item():.3g}; the compiled library is not used"
                    )


def _why_not(device_type: str) -> str | None:
    """None when the operator runs on this device type, else the reason it does not.

    Called at trace time under ``torch.compile``: Dynamo runs it eagerly (building and
    loading the library on a first use) and puts its answer into the graph as a
    constant, instead of tracing the build.
    """
    if device_type not in ("cpu", "meta", "cuda"):
        return f"no kernels for device type {device_type!r}"
    cpu = _try("cpu")
    if isinstance(cpu, BuildError):
        return str(cpu)
    if device_type == "cuda":
        cuda = _try("cuda")
        if isinstance(cuda, BuildError):
            return str(cuda)
    return None


_why_not = _constant_under_compile(_why_not)


def _check_load_args(cuda: object, verbose: object) -> None:
    """``cuda``: a bool or ``None`` (decide by the GPU); ``verbose``: a bool."""
    if cuda is not None:
        check_bool("cuda", cuda)
    check_bool("verbose", verbose)


def load(cuda: bool | None = None, verbose: bool = False) -> list[BuildInfo]:
    """Build (when needed), verify and load the operator; return what was loaded.

    Args:
        cuda: ``True``: the CUDA kernels too, or raise; ``False``: the CPU library
            only; ``None``: the CUDA kernels too when a GPU is present, and when they
            cannot be built (no ``nvcc``, say) a warning gives the reason and the CPU
            library is returned alone (:func:`is_available` then says ``False`` for
            ``"cuda"``).
        verbose: show the compiler's output (it goes to stderr).

    Raises:
        BuildError: the CPU library (or, with ``cuda=True``, the CUDA one)
            could not be built.
    """
    _check_load_args(cuda, verbose)
    loaded = []
    for kind in ["cpu"] + (
        ["cuda"] if (torch.cuda.is_available() if cuda is None else cuda) else []
    ):
        result = _try(kind, verbose)
        if isinstance(result, BuildError):
            if kind == "cuda" and cuda is None:
                if "cuda-load" not in _warned:
                    _warned.add("cuda-load")
                    warnings.warn(
                        f"ccnet_edu: the CUDA operator is unavailable ({result}); "
                        "loaded the CPU operator only",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                continue
            raise result
        loaded.append(result)
    return loaded


def is_available(device: torch.device | str = "cpu") -> bool:
    """Whether the operator can run on ``device`` (building it if needed)."""
    return _why_not(check_device("device", device).type) is None


#: Device types on which the fused operator has been measured faster than the readable
#: reference (``python -m ccnet_edu.ops bench``, results in the project's notes and
#: ``benchmarks/``).  The CUDA kernels (tiled line kernels, ``csrc/cca_lines*.h``) have
#: not yet been timed on a GPU (``benchmarks/gpu_check.sh``), so ``impl="auto"`` does
#: not pick them.
#: "meta" (shapes only, for FLOP and memory accounting) stands for what the CPU runs.
MEASURED_FASTER = frozenset({"cpu", "meta"})

#: ISA levels whose CPU build was measured faster than einsum, forward and backward
#: (``benchmarks/cpu_isa.py``, results in ``benchmarks/results/``).  The 16-byte
#: ``x86-64`` build was measured slower, and ``portable`` (aarch64, ...) has not been
#: timed, so on a CPU that only runs those ``impl="auto"`` uses the reference.
MEASURED_FASTER_ISAS = frozenset({"x86-64-v4", "x86-64-v3"})


def _check_has_device(tensor: object) -> None:
    """A tensor (or anything with a ``torch.device`` as its ``.device``, as a test double)."""
    if not isinstance(getattr(tensor, "device", None), torch.device):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")


def usable_for(tensor: torch.Tensor) -> bool:
    """Whether ``impl="auto"`` should use the operator for ``tensor``.

    Only on device types in :data:`MEASURED_FASTER` and, on the CPU, for a library
    built for a level in :data:`MEASURED_FASTER_ISAS` (elsewhere, such as on CUDA,
    "auto" quietly uses the reference: a choice, not a failure).  Where the operator cannot
    be built or failed its self-test, the first ``False`` per device type emits one
    warning saying why.
    """
    _check_has_device(tensor)
    return _usable_on(tensor.device.type)


def _usable_on(device_type: str) -> bool:
    """:func:`usable_for` for a device type; a constant of the graph under ``torch.compile``."""
    if device_type not in MEASURED_FASTER:
        return False
    reason = _why_not(device_type)
    if reason is None:
        info = _state.get("cpu")
        return info is None or info.extra.get("isa") in MEASURED_FASTER_ISAS
    if device_type not in _warned:
        _warned.add(device_type)
        warnings.warn(
            f"ccnet_edu: fused criss-cross attention unavailable on {device_type} "
            f"({reason}); using the reference implementation",
            RuntimeWarning,
            stacklevel=4,
        )
    return False


_usable_on = _constant_under_compile(_usable_on)


def criss_cross_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused criss-cross attention: ``(out, attention)``.

    query, key: (B, C', H, W); value: (B, C, H, W); any floating dtype
    (float16/bfloat16 accumulate in float32).
    Returns out (B, C, H, W) (channels-last strides) and attention
    (B, H, W, H+W-1). Both outputs are differentiable: gradients reach
    query, key and value through ``out`` and through ``attention``.

    Raises:
        RuntimeError: the operator cannot be built or loaded for this device.
    """
    from ..functional import check_qkv  # lazy: functional imports this package lazily too

    check_qkv(query, key, value)
    reason = _why_not(query.device.type)
    if reason is not None:
        raise RuntimeError(
            f"impl='fused': the criss-cross operator is not available on "
            f"{query.device.type}: {reason}"
        )
    return torch.ops.ccnet_edu.criss_cross_attention(query, key, value)


# ------------------------------------------------------------------ registration


def _check_devices(op: str, query: torch.Tensor, **others: torch.Tensor | None) -> None:
    # The dispatcher sends a call that mixes meta and real tensors to the fake kernel;
    # without this check it would return uninitialised tensors on query's device.
    for name, tensor in others.items():
        if tensor is not None and tensor.device != query.device:
            raise RuntimeError(
                f"{op}: {name} must be on the device of query ({query.device}), got {tensor.device}"
            )


def _fake_forward(query, key, value):
    _check_devices("criss_cross_attention", query, key=key, value=value)
    batch, _, height, width = query.shape
    out = torch.empty(
        (batch, value.shape[1], height, width),
        dtype=value.dtype,
        device=value.device,
        memory_format=torch.channels_last,
    )
    attention = query.new_empty((batch, height, width, height + width - 1))
    return out, attention


def _fake_backward(grad_out, grad_attention, attention, query, key, value):
    _check_devices(
        "criss_cross_attention_backward",
        query,
        key=key,
        value=value,
        grad_out=grad_out,
        attention=attention,
        grad_attention=grad_attention,
    )
    # Each gradient has its input's layout (NCHW for NCHW inputs), so autograd
    # need not copy it into that layout.
    return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


def _setup_context(ctx, inputs, output):
    query, key, value = inputs
    _, attention = output
    ctx.save_for_backward(query, key, value, attention)
    # An output nobody used arrives as None instead of a tensor of zeros: the
    # attention map usually is not used, and its zeros would cost an (B, H, W, L)
    # allocation, a fill and N * L additions in the backward.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_out, grad_attention):
    query, key, value, attention = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(value)
    return torch.ops.ccnet_edu.criss_cross_attention_backward(
        grad_out, grad_attention, attention, query, key, value
    )


_registered = False


def _register_python_side() -> None:
    global _registered
    if _registered:
        return
    for prefix in ("", "portable_"):
        torch.library.register_fake(f"ccnet_edu::{prefix}criss_cross_attention")(_fake_forward)
        torch.library.register_fake(f"ccnet_edu::{prefix}criss_cross_attention_backward")(
            _fake_backward
        )
    torch.library.register_autograd(
        "ccnet_edu::criss_cross_attention", _backward, setup_context=_setup_context
    )
    _registered = True
