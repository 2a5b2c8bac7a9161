"""The two numbers of criss-cross attention on a GPU: bytes moved and operations done.

For a map of ``N = B H W`` pixels, each with ``L = H + W - 1`` positions in its
criss-cross set, ``C'`` query/key channels and ``C`` value channels:

* operations (a multiply-add is two):
  forward ``2 N L C'`` (energies) ``+ 2 N L C`` (aggregation); backward
  ``2 N L C`` (dA = dout . value) ``+ 2 N L C`` (grad value) ``+ 4 N L C'`` (grad query
  and key);
* the fewest bytes any implementation moves through DRAM, every input read once and
  every output written once: forward reads query, key, value and writes out and the
  attention, ``N (2 C' + 2 C + L)`` elements; backward reads query, key, value, the
  attention and grad out and writes the three gradients, ``N (4 C' + 3 C + L)``.

Over a GPU's memory bandwidth and its arithmetic rate they give two times; the larger
is the floor no implementation goes under (:func:`floor_seconds`).  The ceilings in
:data:`CEILINGS` are the vendor's datasheet figures: leads, to be replaced by the rates
measured on the machine (``benchmarks/gpu_check.py`` measures both).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CEILINGS", "Ceiling", "Costs", "costs", "floor_seconds", "SHAPES"]

#: The three problem sizes of ``benchmarks/gpu_check.py``: (B, C', C, H, W).  97 x 97 is
#: CCNet's setting (a 769 x 769 crop at output stride 8, C = 512, C' = C / 8).
SHAPES = ((1, 64, 512, 97, 97), (8, 64, 512, 97, 97), (2, 64, 512, 128, 256))


@dataclass(frozen=True)
class Ceiling:
    """A GPU's peak rates (dense, no sparsity) and where they come from."""

    name: str
    bandwidth: float  # bytes/s of DRAM
    bf16: float  # FLOP/s on the tensor cores, float16/bfloat16 inputs
    tf32: float  # FLOP/s on the tensor cores, TF32 inputs
    fp32: float  # FLOP/s of plain float32 fused multiply-adds
    source: str


CEILINGS = {
    "H100 SXM": Ceiling(
        "H100 SXM",
        3.35e12,
        989.4e12,
        494.7e12,
        67e12,
        "NVIDIA H100 Tensor Core GPU datasheet (SXM; the tensor-core rates it quotes with "
        "sparsity halved)",
    ),
    "H200 SXM": Ceiling(
        "H200 SXM",
        4.8e12,
        989.4e12,
        494.7e12,
        67e12,
        "NVIDIA H200 Tensor Core GPU datasheet (SXM; same processor and rates as the H100 "
        "SXM, HBM3e at 4.8 TB/s)",
    ),
}


@dataclass(frozen=True)
class Costs:
    """Operations and fewest DRAM bytes of one pass."""

    flops: float
    bytes: float


def costs(shape: tuple[int, int, int, int, int], element_bytes: int, mode: str) -> Costs:
    """Operations and fewest bytes at ``shape = (B, C', C, H, W)``.

    Args:
        element_bytes: 4 for float32, 2 for float16/bfloat16 (inputs, outputs and the
            attention all in that dtype).
        mode: ``"forward"``, ``"backward"`` or ``"forward+backward"``.
    """
    batch, qk, channels, height, width = shape
    n, slots = batch * height * width, height + width - 1
    forward = Costs(
        2 * n * slots * (qk + channels), element_bytes * n * (2 * qk + 2 * channels + slots)
    )
    backward = Costs(
        4 * n * slots * (qk + channels), element_bytes * n * (4 * qk + 3 * channels + slots)
    )
    if mode == "forward":
        return forward
    if mode == "backward":
        return backward
    if mode == "forward+backward":
        return Costs(forward.flops + backward.flops, forward.bytes + backward.bytes)
    raise ValueError(f"mode must be 'forward', 'backward' or 'forward+backward', got {mode!r}")


def floor_seconds(c: Costs, bandwidth: float, rate: float) -> tuple[float, float]:
    """``(memory time, arithmetic time)``; the larger is the floor."""
    return c.bytes / bandwidth, c.flops / rate
