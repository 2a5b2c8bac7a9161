"""The tiled GPU kernels of ``csrc/cca_lines.h``, run on the CPU.

The CUDA kernels' bodies are written against an *executor*; ``csrc/cca_lines_host.h``
is a CPU one that runs the same bodies phase by phase: a CTA's 128 threads one after
another between barriers, its 4 warps one after another for the matrix products,
each tensor-core product in float arithmetic on the operands the GPU gives it
(float32 split into TF32 parts exactly as the GPU splits it).  This module compiles
``csrc/cca_lines_emulate.cpp`` with the C++ compiler alone (no torch headers, no
CUDA; a few seconds, cached by content) and calls it through :mod:`ctypes`.

The kernels read their inputs in place, NCHW or channels-last (``layout``), stream
their tiles into shared memory by asynchronous copies, which the emulation lands at the
wait that covers them or at their issue (``early_copies``: both must give the same
bits), and run the passes a group of maps and a slice of the value channels at a time
for a given L2 (``l2_bytes``, :func:`plan`).

It is slow and only for checking: the tests and chapter "Making it fast on a GPU"
compare it with the float64 reference, and read the kernels' work decomposition off
it (:func:`grid`, :func:`decode`, :func:`smem_bytes`).  Outputs, scratch buffers and
shared memory start as NaN, so an element nothing wrote shows.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import shutil
import subprocess
from pathlib import Path

import torch

from ._checks import (
    MAX_CCA_BATCH,
    check_bool,
    check_cca_shape,
    check_choice,
    check_float,
    check_int,
    check_qkv_agree,
    check_tensor,
)
from .ops._build import BuildError, build_dir, csrc_dir, first_error, load_verified

__all__ = [
    "DTYPES",
    "LAUNCH_FIELDS",
    "PASSES",
    "SM90_SMEM_BYTES",
    "backward",
    "decode",
    "forward",
    "grid",
    "launches",
    "library",
    "merge_lse",
    "plan",
    "smem_bytes",
    "supported",
]

#: dtype -> the kernels' dtype code (csrc/cca_tiling.h, DType).
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
#: pass name -> code (csrc/cca_tiling.h, Pass): the forward's statistics and aggregation,
#: the backward's dA and gradients.
PASSES = {"stats": 0, "agg": 1, "bwd_da": 2, "bwd_grads": 3}
#: The most dynamic shared memory one CTA of an sm_90 GPU (H100, H200) may ask for, bytes:
#: ``kSm90Smem`` in ``csrc/cca_tiling.h``, what :func:`forward` and :func:`backward` run as.
#: Other GPUs give less (163 KB on compute capability 8.0, 99 KB on 8.6 and 8.9); the
#: launcher reads the device's own (``cudaDevAttrMaxSharedMemoryPerBlockOptin``).
SM90_SMEM_BYTES = 227 * 1024
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
    lib.cca_lines_launches.restype = ctypes.c_int64
    lib.cca_lines_merge_lse.argtypes = [ctypes.c_float] * 4
    return lib


#: The most maps :func:`launches` lists the launches of, the most launches it lists (each a
#: record of 7 ints), and the largest L2 (bytes) the helpers plan for (a 64-bit integer on
#: the C side).  Shapes are bounded by ``_checks.check_cca_shape``.
MAX_LAUNCH_MAPS, MAX_LAUNCHES, MAX_L2_BYTES = 4096, 2**20, 2**62


def _shape(shape, *, max_batch: int = MAX_CCA_BATCH, minimum: int = 1) -> ctypes.Array:
    """``shape`` checked (``check_cca_shape``) before the C side divides by any of its
    dimensions or sizes anything."""
    return (ctypes.c_int64 * 5)(*check_cca_shape(shape, minimum=minimum, max_batch=max_batch))


def _dtype(dtype: object, name: str = "dtype") -> int:
    if dtype not in DTYPES:
        raise TypeError(
            f"{name} must be torch.float32, torch.float16 or torch.bfloat16, got {dtype!r}"
        )
    return DTYPES[dtype]


def _pass(pass_: object) -> int:
    return PASSES[check_choice("pass_", pass_, tuple(PASSES))]


def _mode(mode: object) -> str:
    return check_choice("mode", mode, ("forward", "backward"))


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr() if t is not None else None)


def _in_layout(x: torch.Tensor, nchw: bool) -> torch.Tensor:
    x = x.detach().cpu()
    return x.contiguous() if nchw else x.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C)


def _nan(batch: int, channels: int, height: int, width: int, dtype, nchw: bool) -> torch.Tensor:
    shape = (batch, channels, height, width) if nchw else (batch, height, width, channels)
    return torch.full(shape, float("nan"), dtype=dtype)


def _as_nchw(x: torch.Tensor, nchw: bool) -> torch.Tensor:
    return x if nchw else x.permute(0, 3, 1, 2)


def _is_nchw(layout: str) -> bool:
    if layout not in ("nchw", "channels_last"):
        raise ValueError(f"layout must be 'nchw' or 'channels_last', got {layout!r}")
    return layout == "nchw"


def _dims(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[int, ...]:
    """The checked (B, C', C, H, W) of query, key and value (4-D, one dtype the kernels take)."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        check_tensor(name, t, dim=4, kind="float", layout="(B, C, H, W)")
    check_qkv_agree(query, key, value, layout="(B, C', H, W)", shared="batch, height and width")
    _dtype(query.dtype, "query's dtype")
    batch, qk, height, width = query.shape
    dims = (batch, qk, value.shape[1], height, width)
    _shape(dims)
    return dims


def _flags(reverse: bool, early_copies: bool, nchw: bool, grad_out_nchw: bool = False) -> int:
    return int(reverse) | 2 * int(early_copies) | 4 * int(nchw) | 8 * int(grad_out_nchw)


def _check(rc: int, dims, dtype) -> None:
    if rc == -2:
        raise RuntimeError("a CTA of the tiled kernels ended with asynchronous copies in flight")
    if rc != 0:
        raise ValueError(f"the tiled kernels do not take {dims} in {dtype}")


def forward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    reverse: bool = False,
    early_copies: bool = False,
    l2_bytes: int = 0,
    layout: str = "nchw",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward passes: ``(out (B, C, H, W), attention (B, H, W, H+W-1))``.

    float32, float16 or bfloat16 on the CPU; ``reverse`` runs each pass's CTAs in
    decreasing order (the result must not depend on it).  The kernels' asynchronous
    copies land at the wait that covers them, or with ``early_copies`` when they are
    issued: a GPU's land in between, so both must give the same bits.  ``l2_bytes``:
    the L2 for which the passes run a group of maps and a slice of the value channels
    at a time (:func:`plan`), as on a GPU; 0 runs them over everything at once.
    ``layout``: the kernels read ``"nchw"`` tensors (what a convolution gives) or
    ``"channels_last"`` ones, in place; ``out`` is channels-last either way.
    """
    nchw = _is_nchw(layout)
    dims = _dims(query, key, value)
    reverse, early_copies = check_bool("reverse", reverse), check_bool("early_copies", early_copies)
    l2_bytes = check_int("l2_bytes", l2_bytes, minimum=0, maximum=MAX_L2_BYTES)
    batch, _, channels, height, width = dims
    q, k, v = (_in_layout(t, nchw) for t in (query, key, value))
    out = _nan(batch, channels, height, width, query.dtype, False)  # channels-last
    att = torch.full((batch, height, width, height + width - 1), float("nan"), dtype=query.dtype)
    rc = library().cca_lines_forward(
        DTYPES[query.dtype],
        _shape(dims),
        _ptr(q),
        _ptr(k),
        _ptr(v),
        _ptr(out),
        _ptr(att),
        _flags(reverse, early_copies, nchw),
        ctypes.c_int64(l2_bytes),
    )
    _check(rc, dims, query.dtype)
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
    early_copies: bool = False,
    l2_bytes: int = 0,
    layout: str = "nchw",
    grad_out_layout: str | None = None,
) -> list[torch.Tensor]:
    """The backward passes: ``[grad_query, grad_key, grad_value]``, each (B, C, H, W)
    (``reverse``, ``early_copies``, ``l2_bytes``, ``layout``: as :func:`forward`);
    ``grad_out`` is read in ``grad_out_layout`` (default ``layout``), as the CUDA
    operator reads the ``grad_out`` it is given in its own layout, NCHW or channels-last,
    whichever arrives (it depends on the operations after ``out``)."""
    nchw = _is_nchw(layout)
    go_nchw = _is_nchw(grad_out_layout or layout)
    dims = _dims(query, key, value)
    reverse, early_copies = check_bool("reverse", reverse), check_bool("early_copies", early_copies)
    l2_bytes = check_int("l2_bytes", l2_bytes, minimum=0, maximum=MAX_L2_BYTES)
    batch, qk, channels, height, width = dims
    n, slots = (batch, height, width), height + width - 1
    check_tensor("grad_out", grad_out, dim=4, kind="float")
    if tuple(grad_out.shape) != (batch, channels, height, width) or grad_out.dtype != query.dtype:
        raise ValueError(
            f"grad_out must be {(batch, channels, height, width)} in {query.dtype}, "
            f"got {tuple(grad_out.shape)} in {grad_out.dtype}"
        )
    for name, t in (("attention", attention), ("grad_attention", grad_attention)):
        if t is None and name == "grad_attention":
            continue
        check_tensor(name, t, dim=4, kind="float")
        if tuple(t.shape) != (*n, slots) or t.dtype != query.dtype:
            raise ValueError(
                f"{name} must be {(*n, slots)} in {query.dtype}, got {tuple(t.shape)} in {t.dtype}"
            )
    q, k, v = (_in_layout(t, nchw) for t in (query, key, value))
    go = _in_layout(grad_out, go_nchw)
    ga = grad_attention.detach().contiguous() if grad_attention is not None else None
    grads = [_nan(batch, c, height, width, query.dtype, nchw) for c in (qk, qk, channels)]
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
        _flags(reverse, early_copies, nchw, go_nchw),
        ctypes.c_int64(l2_bytes),
    )
    _check(rc, dims, query.dtype)
    return [_as_nchw(g, nchw) for g in grads]


def supported(
    shape: tuple[int, int, int, int, int],
    dtype: torch.dtype,
    smem_limit: int = SM90_SMEM_BYTES,
) -> bool:
    """Whether the tiled kernels take ``shape = (B, C', C, H, W)`` on a GPU whose CTAs may
    ask for at most ``smem_limit`` bytes of dynamic shared memory (else the portable
    kernels run): the launcher's decision (``tiled_supported`` in ``csrc/cca_tiling.h``),
    every pass of the forward and of the backward within the limit."""
    smem_limit = check_int("smem_limit", smem_limit, minimum=0)
    dims = _shape(shape, minimum=0)  # an empty map: not taken (False), no division
    return dtype in DTYPES and bool(
        library().cca_lines_supported(dims, DTYPES[dtype], ctypes.c_int64(smem_limit))
    )


def grid(pass_: str, direction: int, shape: tuple[int, int, int, int, int]) -> int:
    """CTAs of a pass (direction 0 rows, 1 columns, for the one-direction passes)."""
    code, dims = _pass(pass_), _shape(shape)
    direction = check_choice("direction", direction, (0, 1))
    return library().cca_lines_grid(code, direction, dims)


def decode(pass_: str, direction: int, shape, index: int) -> dict[str, int]:
    """What CTA ``index`` of a pass works on: direction, line, block, chunk, kind."""
    ctas = grid(pass_, direction, shape)
    if ctas == 0:
        raise ValueError(f"pass_ {pass_!r} has no CTAs in direction {direction} at shape {shape}")
    index = check_int("index", index, minimum=0, maximum=ctas - 1)
    out = (ctypes.c_int64 * 5)()
    library().cca_lines_decode(PASSES[pass_], direction, _shape(shape), ctypes.c_int64(index), out)
    return dict(zip(("dir", "line", "block", "chunk", "kind"), out, strict=True))


def smem_bytes(pass_: str, shape, dtype: torch.dtype) -> int:
    """Shared memory of one CTA of a pass, bytes."""
    code, dims, dtype_code = _pass(pass_), _shape(shape), _dtype(dtype)
    return library().cca_lines_smem_bytes(code, dims, dtype_code)


def plan(
    shape: tuple[int, int, int, int, int], dtype: torch.dtype, mode: str, l2_bytes: int
) -> dict[str, int | bool]:
    """How the passes are grouped for an L2 of ``l2_bytes``: maps per group, value
    channels per slice, slices, whether a slice's reused tensors fit half the L2, and
    whether the backward accumulates dA slice by slice (``mode``: ``"forward"`` or
    ``"backward"``; ``csrc/cca_tiling.h``, plan_passes)."""
    dims, dtype_code, mode = _shape(shape), _dtype(dtype), _mode(mode)
    l2_bytes = check_int("l2_bytes", l2_bytes, minimum=0, maximum=MAX_L2_BYTES)
    out = (ctypes.c_int64 * 5)()
    library().cca_lines_plan(
        dims, dtype_code, int(mode == "backward"), ctypes.c_int64(l2_bytes), out
    )
    return {
        "maps": out[0],
        "width": out[1],
        "slices": out[2],
        "fits": bool(out[3]),
        "sliced_da": bool(out[4]),
    }


#: What :func:`launches` records of each launch.
LAUNCH_FIELDS = ("pass", "dir", "grid", "maps", "v0", "v1", "qk_grads")
_PASS_NAMES = {code: name for name, code in PASSES.items()}


def launches(
    shape: tuple[int, int, int, int, int], dtype: torch.dtype, mode: str, l2_bytes: int
) -> list[dict[str, int | str]]:
    """The launches the forward or the backward makes at an L2 of ``l2_bytes``, in order,
    without running them (``run_forward`` / ``run_backward`` in ``csrc/cca_lines.h``): for
    each, its pass (a :data:`PASSES` name), direction (0 rows, 1 columns; -1 for the
    launches over both), grid (CTAs), the maps of its group, the slice ``[v0, v1)`` of the
    value channels, and whether a gradients launch holds grad key and grad query CTAs.
    At most :data:`MAX_LAUNCH_MAPS` maps (B)."""
    dims = _shape(shape, max_batch=MAX_LAUNCH_MAPS)
    dtype_code, mode = _dtype(dtype), _mode(mode)
    l2_bytes = check_int("l2_bytes", l2_bytes, minimum=0, maximum=MAX_L2_BYTES)
    lib = library()

    def record(capacity: int) -> tuple[int, ctypes.Array]:
        out = (ctypes.c_int64 * max(1, 7 * capacity))()
        count = lib.cca_lines_launches(
            dims,
            dtype_code,
            int(mode == "backward"),
            ctypes.c_int64(l2_bytes),
            out,
            ctypes.c_int64(capacity),
        )
        return count, out

    count, _ = record(0)  # how many, before anything is sized by it
    if count > MAX_LAUNCHES:
        raise ValueError(
            f"shape {tuple(shape)} at l2_bytes={l2_bytes} makes {count} launches, more than "
            f"the {MAX_LAUNCHES} launches lists"
        )
    count, out = record(count)
    records = []
    for n in range(count):
        record = dict(zip(LAUNCH_FIELDS, out[7 * n : 7 * n + 7], strict=True))
        record["pass"] = _PASS_NAMES[record["pass"]]
        records.append(record)
    return records


def merge_lse(m_row: float, s_row: float, m_col: float, s_col: float) -> float:
    """The kernels' log-sum-exp of a cross from its halves' (max, sum of exp(e - max)): the
    row half always holds the centre (finite ``m_row``, ``s_row >= 1``); an empty column
    half has ``m_col = -inf`` and ``s_col = 0``."""
    m_row = check_float("m_row", m_row)
    s_row = check_float("s_row", s_row, minimum=1.0)
    if not (isinstance(m_col, float) and m_col == -math.inf):
        m_col = check_float("m_col", m_col)
    s_col = check_float("s_col", s_col, minimum=0.0)
    return library().cca_lines_merge_lse(m_row, s_row, m_col, s_col)
