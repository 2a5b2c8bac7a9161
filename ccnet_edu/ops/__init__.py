"""The accelerated criss-cross attention operator, ``torch.ops.ccnet_edu``.

C++/CUDA kernels in ``csrc/`` (built on first use, see :mod:`ccnet_edu.ops._build`)
registered as ``torch.library`` custom operators, with their fake (meta) kernels
and autograd formulas registered here, so the operator works with
``torch.compile`` and passes ``torch.library.opcheck``.

Operators (namespace ``ccnet_edu``):

* ``criss_cross_attention(query, key, value) -> (out, attention)``;
* ``criss_cross_attention_backward(grad_out, grad_attention?, attention, query, key, value)
  -> (grad_query, grad_key, grad_value)``;
* ``portable_criss_cross_attention[_backward]``: the CUDA build's code path run on
  the CPU (one element per loop iteration), so CPU tests check what the GPU runs.

Layouts: ``out`` is (B, C, H, W) stored channels-last (``torch.channels_last``
strides: the kernels work on per-pixel vectors); ``attention`` is
(B, H, W, H+W-1) in the layout of :mod:`ccnet_edu.functional`; the gradients
of the backward have the layouts of query, key and value.
"""

from __future__ import annotations

import warnings

import torch

from ._build import BuildError, BuildInfo, build_dir, csrc_dir, find_nvcc, load_cpu, load_cuda

__all__ = [
    "BuildError",
    "BuildInfo",
    "build_dir",
    "criss_cross_attention",
    "csrc_dir",
    "is_available",
    "load",
    "usable_for",
]

# device type -> BuildInfo (loaded) or BuildError (cannot); absent = not tried yet
_state: dict[str, BuildInfo | BuildError] = {}
_warned: set[str] = set()


def _try(kind: str, verbose: bool = False) -> BuildInfo | BuildError:
    if kind not in _state:
        try:
            info = load_cpu(verbose) if kind == "cpu" else load_cuda(verbose)
            if kind == "cpu":
                _register_python_side()
            _state[kind] = info
        except BuildError as error:
            _state[kind] = error
    return _state[kind]


def _why_not(device_type: str) -> str | None:
    """None when the operator runs on this device type, else the reason it does not."""
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


def load(cuda: bool | None = None, verbose: bool = False) -> list[BuildInfo]:
    """Build (when needed) and load the operator; return what was loaded.

    Args:
        cuda: also build the CUDA kernels. ``None``: only when a GPU is present.
        verbose: show the compiler's output (it goes to stderr).

    Raises:
        BuildError: the CPU library (or, with ``cuda=True``, the CUDA one)
            could not be built.
    """
    loaded = []
    for kind in ["cpu"] + (
        ["cuda"] if (torch.cuda.is_available() if cuda is None else cuda) else []
    ):
        result = _try(kind, verbose)
        if isinstance(result, BuildError):
            raise result
        loaded.append(result)
    return loaded


def is_available(device: torch.device | str = "cpu") -> bool:
    """Whether the operator can run on ``device`` (building it if needed)."""
    return _why_not(torch.device(device).type) is None


def usable_for(tensor: torch.Tensor) -> bool:
    """Whether ``impl="auto"`` should use the operator for ``tensor``.

    The first ``False`` per device type emits one warning saying why.
    """
    reason = _why_not(tensor.device.type)
    if reason is None:
        return True
    if tensor.device.type not in _warned:
        _warned.add(tensor.device.type)
        warnings.warn(
            f"ccnet_edu: fused criss-cross attention unavailable on {tensor.device.type} "
            f"({reason}); using the reference implementation",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


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


def _fake_forward(query, key, value):
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
    torch.library.register_fake("ccnet_edu::criss_cross_attention")(_fake_forward)
    torch.library.register_fake("ccnet_edu::criss_cross_attention_backward")(_fake_backward)
    torch.library.register_autograd(
        "ccnet_edu::criss_cross_attention", _backward, setup_context=_setup_context
    )
    _registered = True


# Re-exported for ``python -m ccnet_edu.ops build``.
_ = (csrc_dir, find_nvcc)
