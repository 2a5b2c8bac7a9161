"""The tiled GPU kernels of ``csrc/cca_lines.h``, run on the CPU.

The CUDA kernels' bodies are written against an *executor*; ``csrc/cca_lines_host.h``
is a CPU one that runs the same bodies phase by phase: a CTA's 128 threads one after
another between barriers, its 4 warps one after another for the matrix products,
each tensor-core product in float arithmetic on the operands the GPU gives it
(float32 split into TF32 parts exactly as the GPU splits it).  This module compiles
``csrc/cca_lines_emulate.cpp`` with the C++ compiler alone (no torch headers, no
CUDA; a few seconds, cached by content) and calls it through :mod:`ctypes`.

It is slow and only for checking: the tests and chapter "Making it fast on a GPU"
compare it with the float64 reference, and read the kernels' work decomposition off
it (:func:`grid`, :func:`decode`, :func:`smem_bytes`).  Outputs, scratch buffers and
shared memory start as NaN, so an element nothing wrote shows.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import torch

from .ops._build import BuildError, build_dir, csrc_dir, first_error, load_verified

__all__ = [
    "DTYPES",
    "PASSES",
    "backward",
    "decode",
    "forward",
    "grid",
    "library",
    "merge_lse",
    "smem_bytes",
    "supported",
]

#: dtype -> the kernels' dtype code (csrc/cca_tiling.h, DType).
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
#: pass name -> code (csrc/cca_tiling.h, Pass): the forward's statistics and aggregation,
#: the backward's dA and gradients.
PASSES = {"stats": 0, "agg": 1, "bwd_da": 2, "bwd_grads": 3}
_SOURCES = ("cca_tiling.h", "cca_lines.h", "cca_lines_host.h", "cca_lines_emulate.cpp")


@functools.cache
def library() -> ctypes.CDLL:
    """Compile (once per content) and load the emulation.

    Raises:
        BuildError: no C++ compiler, or it failed.
    """
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler is None:
        raise BuildError("no C++ compiler (set CXX) to build the kernels' CPU emulation")
    src = csrc_dir()
    flags = ["-std=c++17", "-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror"]
    key = hashlib.sha256(" ".join([compiler, *flags]).encode())
    for name in _SOURCES:
        key.update((src / name).read_bytes())
    directory = build_dir() / f"emulation-{key.hexdigest()[:16]}"
    path = directory / "cca_lines_emulate.so"

    def build(staging: Path) -> None:
        result = subprocess.run(
            [compiler, *flags, str(src / "cca_lines_emulate.cpp"), "-o", str(staging / path.name)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise BuildError(
                f"building the emulation failed: {first_error(result.stderr)}\n"
                f"{result.stderr[-2000:]}"
            )

    try:
        directory.mkdir(parents=True, exist_ok=True)
        # loaded only when its digest matches the record written when it was built
        lib, _ = load_verified(path, build, lambda library: ctypes.CDLL(str(library)))
    except OSError as error:
        raise BuildError(f"building the emulation in {directory} failed: {error}") from error
    lib.cca_lines_grid.restype = ctypes.c_int64
    lib.cca_lines_smem_bytes.restype = ctypes.c_int64
    lib.cca_lines_merge_lse.restype = ctypes.c_float
    lib.cca_lines_merge_lse.argtypes = [ctypes.c_float] * 4
    return lib


def _shape(shape) -> ctypes.Array:
    return (ctypes.c_int64 * 5)(*shape)


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr() if t is not None else None)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.detach().cpu().permute(0, 2, 3, 1).contiguous()  # (B, H, W, C)


def _dims(query: torch.Tensor, value: torch.Tensor) -> tuple[int, int, int, int, int]:
    batch, qk, height, width = query.shape
    return batch, qk, value.shape[1], height, width


def forward(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, reverse: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward passes: ``(out (B, C, H, W), attention (B, H, W, H+W-1))``.

    float32, float16 or bfloat16 on the CPU; ``reverse`` runs each pass's CTAs in
    decreasing order (the result must not depend on it).
    """
    dims = _dims(query, value)
    batch, _, channels, height, width = dims
    q, k, v = (_channels_last(t) for t in (query, key, value))
    out = torch.full((batch, height, width, channels), float("nan"), dtype=query.dtype)
    att = torch.full((batch, height, width, height + width - 1), float("nan"), dtype=query.dtype)
    rc = library().cca_lines_forward(
        DTYPES[query.dtype],
        _shape(dims),
        _ptr(q),
        _ptr(k),
        _ptr(v),
        _ptr(out),
        _ptr(att),
        int(reverse),
    )
    if rc != 0:
        raise ValueError(f"the tiled kernels do not take {dims} in {query.dtype}")
    return out.permute(0, 3, 1, 2), att


def backward(
    grad_out: torch.Tensor,
    grad_attention: torch.Tensor | None,
    attention: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    reverse: bool = False,
) -> list[torch.Tensor]:
    """The backward passes: ``[grad_query, grad_key, grad_value]``, each (B, C, H, W)."""
    dims = _dims(query, value)
    batch, qk, channels, height, width = dims
    go, q, k, v = (_channels_last(t) for t in (grad_out, query, key, value))
    ga = grad_attention.detach().contiguous() if grad_attention is not None else None
    grads = [
        torch.full((batch, height, width, c), float("nan"), dtype=query.dtype)
        for c in (qk, qk, channels)
    ]
    rc = library().cca_lines_backward(
        DTYPES[query.dtype],
        _shape(dims),
        _ptr(go),
        _ptr(ga),
        _ptr(attention.contiguous()),
        _ptr(q),
        _ptr(k),
        _ptr(v),
        *(_ptr(g) for g in grads),
        int(reverse),
    )
    if rc != 0:
        raise ValueError(f"the tiled kernels do not take {dims} in {query.dtype}")
    return [g.permute(0, 3, 1, 2) for g in grads]


def supported(shape: tuple[int, int, int, int, int], dtype: torch.dtype) -> bool:
    """Whether the tiled kernels take ``shape = (B, C', C, H, W)`` (else the portable ones)."""
    return dtype in DTYPES and bool(library().cca_lines_supported(_shape(shape), DTYPES[dtype]))


def grid(pass_: str, direction: int, shape: tuple[int, int, int, int, int]) -> int:
    """CTAs of a pass (direction 0 rows, 1 columns, for the one-direction passes)."""
    return library().cca_lines_grid(PASSES[pass_], direction, _shape(shape))


def decode(pass_: str, direction: int, shape, index: int) -> dict[str, int]:
    """What CTA ``index`` of a pass works on: direction, line, block, chunk, kind."""
    out = (ctypes.c_int64 * 5)()
    library().cca_lines_decode(PASSES[pass_], direction, _shape(shape), ctypes.c_int64(index), out)
    return dict(zip(("dir", "line", "block", "chunk", "kind"), out, strict=True))


def smem_bytes(pass_: str, shape, dtype: torch.dtype) -> int:
    """Shared memory of one CTA of a pass, bytes."""
    return library().cca_lines_smem_bytes(PASSES[pass_], _shape(shape), DTYPES[dtype])


def merge_lse(m_row: float, s_row: float, m_col: float, s_col: float) -> float:
    """The kernels' log-sum-exp of a cross from its halves' (max, sum of exp(e - max))."""
    return library().cca_lines_merge_lse(m_row, s_row, m_col, s_col)
