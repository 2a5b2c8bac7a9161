"""The two numbers of criss-cross attention on a GPU: bytes moved and operations done.

For ``B`` maps of ``N = H W`` pixels, each pixel with ``L = H + W - 1`` positions in its
criss-cross set, ``C'`` query/key channels and ``C`` value channels:

* operations (a multiply-add is two):
  forward ``2 B N L C'`` (energies) ``+ 2 B N L C`` (aggregation); backward
  ``2 B N L C`` (dA = dout . value) ``+ 2 B N L C`` (grad value) ``+ 4 B N L C'`` (grad
  query and key);
* the fewest bytes an implementation that returns the attention map (as the fused
  operator does) moves through DRAM, every input read once and every output written
  once: forward reads query, key, value and writes out and the attention,
  ``B N (2 C' + 2 C + L)`` elements; backward reads query, key, value, the attention and
  grad out and writes the three gradients, ``B N (4 C' + 3 C + L)``.  An out-only
  implementation needs neither the map's write nor its read, but reads ``out`` again in
  the backward (:func:`costs` with ``attention=False``).

Over a GPU's memory bandwidth and its arithmetic rate they give two times; the larger
is the floor no implementation of those counts goes under (:func:`floor_seconds`).  What a design of
the tiled kernels does and moves against those counts is :func:`design_costs`.  The ceilings in
:data:`CEILINGS` are the vendor's datasheet figures: leads, to be replaced by the rates
measured on the machine (``benchmarks/gpu_check.py`` measures both).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._checks import check_bool, check_cca_shape, check_choice, check_float, check_int

__all__ = [
    "BWD_CHUNK",
    "CEILINGS",
    "DESIGNS",
    "MAX_DA_SLICES",
    "L2_BYTES",
    "SHAPES",
    "Ceiling",
    "Costs",
    "DesignCosts",
    "costs",
    "design_costs",
    "floor_seconds",
    "peak_rate",
    "v2_slices",
    "v3_backward_slices",
    "v4_backward_plan",
    "v4_kept_bytes",
]

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


#: The largest L2 (bytes) the counts take.
MAX_L2_BYTES = 2**62


def _shape(shape: object) -> tuple[int, int, int, int, int]:
    return check_cca_shape(shape)


def _element_bytes(element_bytes: object) -> int:
    return check_choice("element_bytes", element_bytes, (2, 4))


def _l2(l2_bytes: object) -> int:
    return check_int("l2_bytes", l2_bytes, minimum=0, maximum=MAX_L2_BYTES)


def costs(
    shape: tuple[int, int, int, int, int], element_bytes: int, mode: str, attention: bool = True
) -> Costs:
    """Operations and fewest bytes at ``shape = (B, C', C, H, W)``.

    With ``attention`` (what ``impl="fused"`` does: the forward returns the attention map
    and the backward reads it) the forward reads q, k, v and writes out and the attention;
    the backward reads q, k, v, grad out and the attention and writes the three
    gradients.  Without it (an out-only implementation, as FlexAttention's kernels are on a
    GPU) neither the map's write nor its read is needed: the forward writes each
    pixel's float32 log-sum-exp instead; the backward reads it, computes the energies
    again (``2 B N L C'`` more operations) and reads the forward's ``out`` for the row
    sums ``D = sum_c G_c out_c``, as FlashAttention-2 does.  The forward without the map
    moves fewer bytes wherever the map's ``L`` elements a pixel outweigh the 4-byte
    log-sum-exp (every map but the smallest); the backward moves fewer where ``L`` exceeds
    ``out``'s ``C``, and forward plus backward where ``2 L`` does (up to the log-sum-exp's
    4 bytes a pixel each way).  These are counts: what a given implementation moves can be
    more than either.

    The operations are the matrix products only, in both counts: the softmax and the row
    sums ``D`` (``2 B N L`` with the map, ``2 B N C`` from ``out``) are element-wise work,
    not counted.

    Args:
        element_bytes: 4 for float32, 2 for float16/bfloat16 (inputs, outputs and the
            attention all in that dtype).
        mode: ``"forward"``, ``"backward"`` or ``"forward+backward"``.
        attention: whether the attention map is written by the forward and read by the
            backward.
    """
    check_bool("attention", attention)
    batch, qk, channels, height, width = shape = _shape(shape)
    element_bytes = _element_bytes(element_bytes)
    mode = check_choice("mode", mode, ("forward", "backward", "forward+backward"))
    n, slots = batch * height * width, height + width - 1
    e = element_bytes
    if attention:
        forward = Costs(2 * n * slots * (qk + channels), e * n * (2 * qk + 2 * channels + slots))
        backward = Costs(4 * n * slots * (qk + channels), e * n * (4 * qk + 3 * channels + slots))
    else:  # a float32 log-sum-exp per pixel instead of the map; the energies again, out read
        forward = Costs(2 * n * slots * (qk + channels), e * n * (2 * qk + 2 * channels) + 4 * n)
        backward = Costs(
            2 * n * slots * (3 * qk + 2 * channels), e * n * (4 * qk + 4 * channels) + 4 * n
        )
    if mode == "forward":
        return forward
    if mode == "backward":
        return backward
    if mode == "forward+backward":
        return Costs(forward.flops + backward.flops, forward.bytes + backward.bytes)
    raise ValueError(f"mode must be 'forward', 'backward' or 'forward+backward', got {mode!r}")


def floor_seconds(c: Costs, bandwidth: float, rate: float) -> tuple[float, float]:
    """``(memory time, arithmetic time)`` of a :class:`Costs` (or a
    :class:`DesignCosts`); the larger is the floor."""
    if not isinstance(c, (Costs, DesignCosts)):
        raise TypeError(f"c must be a roofline.Costs or DesignCosts, got {type(c).__name__}")
    bandwidth = check_float("bandwidth", bandwidth, minimum=0.0, exclusive_minimum=True)
    rate = check_float("rate", rate, minimum=0.0, exclusive_minimum=True)
    return c.bytes / bandwidth, c.flops / rate


def peak_rate(ceiling: Ceiling, element_bytes: int) -> float:
    """The arithmetic rate (FLOP/s) the floors take for a dtype on ``ceiling``.

    2-byte elements (bfloat16, float16): the tensor cores' rate.  float32 (4): a third of
    the TF32 rate, since the kernels keep float32 accuracy on the tensor cores as 3xTF32,
    three TF32 products per float32 product (a big and a small part of each operand).
    """
    if not isinstance(ceiling, Ceiling):
        raise TypeError(f"ceiling must be a roofline.Ceiling, got {type(ceiling).__name__}")
    if isinstance(element_bytes, bool) or not isinstance(element_bytes, int):
        raise TypeError(f"element_bytes must be an int, got {type(element_bytes).__name__}")
    if element_bytes not in (2, 4):
        raise ValueError(f"element_bytes must be 2 or 4, got {element_bytes!r}")
    return ceiling.bf16 if element_bytes == 2 else ceiling.tf32 / 3


# ------------------------------------------------------------- the kernels' designs

#: The L2 of an H100 and of an H200 (``cudaDeviceProp.l2CacheSize``: 50 MiB on both).
L2_BYTES = 50 * 2**20
#: The share of the L2 that the tensors a group of passes reads twice may take: the rest
#: is left to the streams that pass through it (the attention written, the other CTAs).
L2_SHARE = 0.5
#: The channels one CTA of the tiled kernels covers (``kChunk`` in ``csrc/cca_tiling.h``),
#: and the step of a slice's width (``kFrag``: one tensor-core tile).
CHUNK, SLICE_STEP = 128, 16
#: The longest line whose weights an aggregation CTA keeps for all the chunks of its slice
#: (``kLineProbs`` in ``csrc/cca_tiling.h``; v3).
LINE_PROBS = 128
#: The channels of one step of dA's reduction (``kBwdChunk`` in ``csrc/cca_tiling.h``):
#: the v4 backward's slices are whole steps.
BWD_CHUNK = 64
#: The most slices the v4 backward takes (``kMaxDaSlices``): a bound on its launches (3 a
#: slice), chosen without a GPU timing; past it, v2's order.  It binds right past CCNet's
#: width: float32 at 97 x 97 on a 50 MiB L2 takes 8 slices of 64 at C = 512, and v2's order
#: at any C > 512 (2.26 x the byte floor at C = 513, against 1.10 x at 512).
MAX_DA_SLICES = 8
#: The designs :func:`design_costs` counts: ``"v1"`` the tiled kernels as issue #28 found
#: them, ``"v2"``, ``"v3"`` and ``"v4"`` the designs after it.  Built now: v4 (v3's forward;
#: the backward that accumulates dA slice by slice where it fits the L2, else v2's); v3's
#: backward is designed, not built.
DESIGNS = ("v1", "v2", "v3", "v4")


@dataclass(frozen=True)
class DesignCosts:
    """Operations done and DRAM bytes moved by one design of the tiled kernels.

    ``terms`` splits ``bytes`` by what moves it (bytes per term, summing to ``bytes``);
    ``slices`` is how many slices of the value channels the v2 passes take one after
    another (1 for v1); ``fits`` whether a slice's reused tensors fit the L2 share;
    ``maps`` how many maps a group of passes covers (``plan_passes``; the batch for v1).
    """

    design: str
    flops: float
    bytes: float
    terms: dict[str, float]
    slices: int
    fits: bool
    maps: int = 1


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _slice_width(channels: int, slices: int) -> int:
    return _ceil(_ceil(channels, slices), SLICE_STEP) * SLICE_STEP


def _fewest_slices(channels: int, reused, budget: float) -> tuple[int, int, bool]:
    """The fewest slices of ``channels`` (width a multiple of 16) whose ``reused(width)``
    bytes fit ``budget``; ``(1, channels, False)`` when not even 16 channels fit."""
    for slices in range(1, _ceil(channels, SLICE_STEP) + 1):
        c = _slice_width(channels, slices)
        if reused(c) <= budget:
            c = min(c, channels)
            return _ceil(channels, c), c, True
        if c == SLICE_STEP:
            break
    return 1, channels, False


def v2_slices(
    shape: tuple[int, int, int, int, int], element_bytes: int, mode: str, l2_bytes: int = L2_BYTES
) -> tuple[int, int, bool]:
    """``(slices, width, fits)`` of the v2 design: the fewest slices of the value channels
    (``width`` channels each, the last one the rest) for which what one map's column pass
    reads again (the row pass read or wrote it) fits in ``L2_SHARE`` of the L2; ``fits``
    is False when not even a 16-channel slice fits (then one slice of all channels).
    ``csrc/cca_tiling.h`` (``plan_passes``) makes the same choice.

    Forward, per pixel: query and key (``2 C'``), a slice of value and of out (``2 c``).
    Backward: query, key and their gradients (``4 C'``), a slice of grad out and of grad
    value (``2 c``), D (a float); the column pass's halves of the attention and of dA
    are read once, not again.
    """
    _, qk, channels, height, width = _shape(shape)
    element_bytes, l2_bytes = _element_bytes(element_bytes), _l2(l2_bytes)
    mode = check_choice("mode", mode, ("forward", "backward"))
    pixels = height * width

    def reused(c: int) -> float:
        if mode == "forward":
            return pixels * element_bytes * (2 * qk + 2 * c)
        return pixels * (element_bytes * (4 * qk + 2 * c) + 4)

    return _fewest_slices(channels, reused, L2_SHARE * l2_bytes)


def _v2_maps(
    shape: tuple[int, int, int, int, int], element_bytes: int, mode: str, l2_bytes: int
) -> int:
    """The maps of one group of passes, as ``plan_passes`` groups them: as many as one
    slice of all the channels fits in the L2 share, else one."""
    batch, qk, channels, height, width = shape
    slices, _, fits = v2_slices(shape, element_bytes, mode, l2_bytes)
    if not fits or slices > 1:
        return 1
    pixels = height * width
    if mode == "forward":
        per_map = pixels * element_bytes * (2 * qk + 2 * channels)
    else:
        per_map = pixels * (element_bytes * (4 * qk + 2 * channels) + 4)
    return max(1, min(batch, int(L2_SHARE * l2_bytes) // per_map))


def v3_backward_slices(
    shape: tuple[int, int, int, int, int], element_bytes: int, l2_bytes: int = L2_BYTES
) -> tuple[int, int, bool]:
    """``(slices, width, fits)`` of the v3 backward (:func:`design_costs`): what one map's
    passes read again is grad out and value over all the channels (dA is recomputed
    from them on chip), query, key and their gradients, the slice of grad value, and D:
    ``2 C + 4 C' + c`` elements and a float per pixel, against ``L2_SHARE`` of the L2."""
    _, qk, channels, height, width = _shape(shape)
    element_bytes, l2_bytes = _element_bytes(element_bytes), _l2(l2_bytes)
    pixels = height * width
    return _fewest_slices(
        channels,
        lambda c: pixels * (element_bytes * (2 * channels + 4 * qk + c) + 4),
        L2_SHARE * l2_bytes,
    )


def v4_kept_bytes(shape: tuple[int, int, int, int, int], element_bytes: int, width: int) -> int:
    """What one map of the v4 backward keeps in the L2 with slices of ``width`` value
    channels (``sliced_da_bytes`` in ``csrc/cca_tiling.h``): per pixel the attention
    (``L`` elements), dA and D (``4 L + 8`` bytes), and the larger of a slice's grad out,
    value and grad value (``3 width`` elements) and of query, key and their gradients
    (``4 C'``)."""
    _, qk, _, height, width_ = _shape(shape)
    element_bytes = _element_bytes(element_bytes)
    width = check_int("width", width, minimum=1)
    e, slots = element_bytes, height + width_ - 1
    return height * width_ * (e * slots + 4 * slots + 8 + max(3 * e * width, 4 * e * qk))


def v4_backward_plan(
    shape: tuple[int, int, int, int, int], element_bytes: int, l2_bytes: int = L2_BYTES
) -> tuple[int, int, bool, int]:
    """``(slices, width, fits, maps)`` of the v4 backward (``plan_passes`` in
    ``csrc/cca_tiling.h`` makes the same choice): the fewest slices of the value channels,
    each a whole number of :data:`BWD_CHUNK` steps (the last one the rest), for which one
    map keeps in ``L2_SHARE`` of the L2, per pixel, the attention (``L`` elements), dA and
    D (``4 L + 8`` bytes) and the larger of what the two phases add: during a slice, its
    grad out, value and grad value (``3 c`` elements); during the last launches, query, key
    and their gradients (``4 C'``), in at most :data:`MAX_DA_SLICES` slices.  ``maps``: as
    many maps as fit together where one slice holds all the channels, else 1.
    ``(1, C, False, 1)`` where no such plan exists (then the backward runs v2's passes)."""
    batch, qk, channels, height, width = shape = _shape(shape)
    element_bytes, l2_bytes = _element_bytes(element_bytes), _l2(l2_bytes)
    budget = L2_SHARE * l2_bytes

    def kept(c: int) -> float:
        return v4_kept_bytes(shape, element_bytes, c)

    for slices in range(1, MAX_DA_SLICES + 1):
        c = min(_ceil(_ceil(channels, slices), BWD_CHUNK) * BWD_CHUNK, channels)
        if kept(c) <= budget:
            n = _ceil(channels, c)
            maps = max(1, min(batch, int(budget // kept(channels)))) if n == 1 else 1
            return n, c, True, maps
        if c <= BWD_CHUNK:
            break
    return 1, channels, False, 1


def design_costs(
    shape: tuple[int, int, int, int, int],
    element_bytes: int,
    mode: str,
    design: str,
    l2_bytes: int = L2_BYTES,
) -> DesignCosts:
    """Operations and DRAM bytes of a design of the tiled kernels at ``shape = (B, C', C, H, W)``.

    A design count, not a measurement.  Inputs are NCHW (what a convolution gives);
    the backward without a gradient of the attention (as :func:`costs`).  The bytes are
    counted launch by launch, in the order the launcher runs them in v2 and v3
    (``run_passes`` in ``csrc/cca_lines.h``): per group of maps, one launch over rows and
    columns together (the statistics, or dA), then per slice of the value channels a
    launch over the rows and one over the columns.  What hits the L2:

    * re-reads of a line's tiles by the line's other CTAs within one launch
      (consecutive CTAs share a line);
    * in v2 and v3, the tensors the plan sizes (:func:`v2_slices`: query, key, and the
      slice's value and out in the forward; query, key, their gradients, the slice's
      grad out and grad value, and D in the backward), read from DRAM once per group,
      when they fit ``L2_SHARE`` of ``l2_bytes``;
    * in the launch over rows and columns, the column lines' second reads of what its row
      lines read, when one group's share of it fits ``L2_SHARE`` of ``l2_bytes``.

    Everything else a launch reads is counted from DRAM, once per launch.  Scratch (the
    softmax statistics, dA, D) is float32.

    ``"v1"`` (the kernels issue #28 found): channels-last copies of the inputs (and of
    the gradients back); a statistics pass over both halves; a row and a column
    aggregation, one CTA per 64 queries and 128 value channels, each CTA computing the
    energies and exponentials of its keys again; the column pass reads and rewrites
    ``out``.  ``"v2"``: inputs read in their layout;
    the passes run a group of maps and a slice of the value channels at a time, so that
    the column pass's second reads and the read-modify-write of ``out`` hit the L2; a CTA
    still covers 128 channels of its slice and computes its keys' energies again; every
    aggregation launch reads the statistics.  Its backward keeps v1's passes without the
    copies: one dA launch over rows and columns and all the value channels reads grad out
    and value (its column lines read them again from DRAM where one group's do not fit
    the L2 share) and the attention, and writes dA (float32) and D; then, slice by slice,
    the gradient launches read dA, grad out again, and the attention again in every slice
    (each slice's grad-value CTAs weight its grad out by the attention,
    ``grads_per_line`` in ``csrc/cca_tiling.h``).

    ``"v3"``: v2's forward with each line's energies and exponentials computed once per
    slice of the values: a CTA keeps its 64 queries' weights over a whole line of at most
    :data:`LINE_PROBS` positions in shared memory and sweeps the slice's 128-channel chunks
    over them (the bytes of v2, the energies ``1 + slices`` times instead of ``1 + CTAs``;
    built: ``whole_line`` in ``csrc/cca_tiling.h``).  Its backward (designed, not built)
    keeps no dA: the forward saves ``out`` for the backward
    (a schema change: ``out`` among the saved tensors), a D pass computes
    ``D = sum_c dout * out`` per pixel (FlashAttention-2's way), and the gradient CTAs of
    grad key and grad query recompute ``dA = dout V^T`` on chip over all the channels
    (twice the dA operations), so that no float32 scratch the size of the attention
    moves; grad out and value are read again by the row and column passes, from the L2
    when one map's share of them fits (:func:`v3_backward_slices`), and grad value is
    computed slice by slice, each slice's grad-value CTAs reading the attention again, as
    v2's do.  Where the share does not fit (float32 at 97 x 97, both dtypes at
    128 x 256), reading them again from DRAM would cost more than v2's dA scratch, and v3
    keeps v2's backward passes.

    ``"v4"`` (built): v3's forward; a backward that keeps v2's dA scratch but not its
    extra reads, where one map's attention and float32 dA fit ``L2_SHARE`` of the L2 beside
    a slice, in at most :data:`MAX_DA_SLICES` slices (:func:`v4_backward_plan`).  Per slice
    of the value channels, one launch over rows and columns adds the slice's ``dout V^T`` to
    dA (the first slice writes it, a later one continues the float sums the previous one
    left, the last one adds the attention's own gradient and computes D), then the slice's
    grad-value launches; after the last slice, the grad-key and grad-query launches.  Grad
    out and value are read from DRAM once (by their slice's dA launch; its column lines and
    the slice's grad-value launches find them in the L2), the attention once, query and key
    once; dA and D stay in the L2 and are counted written back once.  Where they do not fit
    (both dtypes at 128 x 256: a map's attention and dA alone take more than the L2), or
    would need more slices (float32 at 97 x 97 past C = 512), v4 runs v2's backward passes.
    """
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS}, got {design!r}")
    if mode not in ("forward", "backward", "forward+backward"):
        raise ValueError(f"mode must be 'forward', 'backward' or 'forward+backward', got {mode!r}")
    shape, element_bytes, l2_bytes = _shape(shape), _element_bytes(element_bytes), _l2(l2_bytes)
    if mode == "forward+backward":
        f = design_costs(shape, element_bytes, "forward", design, l2_bytes)
        b = design_costs(shape, element_bytes, "backward", design, l2_bytes)
        terms = {f"forward: {k}": v for k, v in f.terms.items()}
        terms.update({f"backward: {k}": v for k, v in b.terms.items()})
        return DesignCosts(
            design,
            f.flops + b.flops,
            f.bytes + b.bytes,
            terms,
            max(f.slices, b.slices),
            f.fits and b.fits,
            min(f.maps, b.maps),
        )
    batch, qk, channels, height, width = shape
    n, slots, e = batch * height * width, height + width - 1, element_bytes
    energies = 2 * n * slots * qk  # E = Q K^T over both halves, once
    if design == "v1":
        chunks = _ceil(channels, CHUNK)
        if mode == "forward":
            terms = {
                "channels-last copies of query, key, value": 2 * n * (2 * qk + channels) * e,
                "statistics pass: query, key of both halves": 2 * 2 * n * qk * e,
                "row and column aggregation: query, key, value": 2 * n * (2 * qk + channels) * e,
                "out written, then read and rewritten by the column pass": 3 * n * channels * e,
                "attention written": n * slots * e,
                "statistics (scratch) written, read by both aggregations": 3 * 16 * n,
            }
            flops = energies * (1 + chunks) + 2 * n * slots * channels
        else:
            grads = n * (2 * qk + channels) * e
            terms = {
                "channels-last copies of query, key, value, grad out": (
                    2 * n * (2 * qk + 2 * channels) * e
                ),
                "gradients copied back to the inputs' layout": 2 * grads,
                "dA pass: grad out and value of both halves": 2 * 2 * n * channels * e,
                "attention read by the dA pass and the gradient passes": 2 * n * slots * e,
                "dA (scratch) written, read": 2 * 4 * n * slots,
                "D (scratch) written, read by both gradient passes": 8 * n + 2 * 8 * n,
                "gradient passes: grad out, query, key": 2 * n * (channels + 2 * qk) * e,
                "gradients written, then read and rewritten by the column pass": 3 * grads,
            }
            flops = 4 * n * slots * (qk + channels)
        return DesignCosts(design, flops, sum(terms.values()), terms, 1, True, batch)
    if design == "v4":
        if mode == "forward":
            v3 = design_costs(shape, element_bytes, mode, "v3", l2_bytes)
            return DesignCosts(design, v3.flops, v3.bytes, v3.terms, v3.slices, v3.fits, v3.maps)
        slices, _, fits, maps = v4_backward_plan(shape, element_bytes, l2_bytes)
        if not fits:  # v2's passes
            v2 = design_costs(shape, element_bytes, mode, "v2", l2_bytes)
            return DesignCosts(design, v2.flops, v2.bytes, v2.terms, v2.slices, v2.fits, v2.maps)
        terms = {
            "grad out and value read once (each slice's dA launch)": 2 * n * channels * e,
            "attention read once (kept in the L2 for every slice)": n * slots * e,
            "query and key read once (the grad key and grad query launches)": 2 * n * qk * e,
            "gradients written once": n * (2 * qk + channels) * e,
            "dA (scratch) written back from the L2 once": 4 * n * slots,
            "D (scratch: a partial sum per half) written": 8 * n,
        }
        flops = 4 * n * slots * (qk + channels)
        return DesignCosts(design, flops, sum(terms.values()), terms, slices, fits, maps)
    columns = height > 1  # a map of one row has no column launches
    launches = 2 if columns else 1  # per slice: the rows, then the columns
    budget, pixels = L2_SHARE * l2_bytes, height * width
    if mode == "backward" and design == "v3":
        slices, _, fits = v3_backward_slices(shape, element_bytes, l2_bytes)
        if not fits:  # grad out and value re-read from DRAM would cost more: v2's passes
            v2 = design_costs(shape, element_bytes, mode, "v2", l2_bytes)
            return DesignCosts(design, v2.flops, v2.bytes, v2.terms, v2.slices, v2.fits, v2.maps)
        terms = {
            "query, key, value, grad out read once": n * (2 * qk + 2 * channels) * e,
            "attention read by each slice's gradient launches": slices * n * slots * e,
            "gradients written once": n * (2 * qk + channels) * e,
            "out (saved by the forward) read by the D pass": n * channels * e,
            "D (scratch) written": 4 * n,
        }
        # dA = dout V^T twice (the grad key and the grad query CTAs), D = dout . out
        flops = 4 * n * slots * (qk + channels) + 2 * n * slots * channels + 2 * n * channels
        return DesignCosts(design, flops, sum(terms.values()), terms, slices, fits, 1)
    slices, width_of, fits = v2_slices(shape, element_bytes, mode, l2_bytes)
    maps = _v2_maps(shape, element_bytes, mode, l2_bytes)
    last = channels - (slices - 1) * width_of
    ctas = (slices - 1) * _ceil(width_of, CHUNK) + _ceil(last, CHUNK)  # 128-channel CTAs
    if mode == "forward":
        terms = {
            "query, key, value read once": n * (2 * qk + channels) * e,
            "out written once": n * channels * e,
            "attention written once": n * slots * e,
            "statistics (scratch) written": 16 * n,
            "statistics read by every aggregation launch (each slice's rows and columns)": (
                slices * launches * 16 * n
            ),
        }
        if not fits:
            if columns and maps * pixels * 2 * qk * e > budget:
                terms["statistics pass, column lines: query and key read again"] = n * 2 * qk * e
            terms["row aggregation: query and key read again"] = n * 2 * qk * e
            if columns:
                terms["column pass: query, key, value and out read again"] = (
                    n * (2 * qk + 2 * channels) * e
                )
                terms["out of the row pass written"] = n * channels * e

        # v3: a line of at most LINE_PROBS positions computes its energies once per slice
        # (its chunks sweep one set of weights), a longer one once per 128-channel CTA
        def times(length: int) -> int:
            return slices if design == "v3" and _ceil(length, 64) * 64 <= LINE_PROBS else ctas

        # a row's W energies per pixel, a column's H - 1 (its centre is the row's)
        rows, cols = shape[4], shape[3]  # a row's length W, a column's H
        again = 2 * n * qk * (rows * times(rows) + (cols - 1) * times(cols))
        flops = energies + again + 2 * n * slots * channels
    else:
        terms = {
            "dA pass: grad out and value (all channels)": 2 * n * channels * e,
            "attention read by the dA pass": n * slots * e,
            "dA (scratch) written, read by the gradient launches": 2 * 4 * n * slots,
            "D (scratch: a partial sum per half) written": 8 * n,
            "gradient launches: query, key, and grad out of each slice": (
                n * (2 * qk + channels) * e
            ),
            "attention read again by each slice's gradient launches": slices * n * slots * e,
            "gradients written once": n * (2 * qk + channels) * e,
        }
        if columns and maps * pixels * 2 * channels * e > budget:
            terms["dA pass, column lines: grad out and value read again"] = 2 * n * channels * e
        if not fits:
            terms["D read by the gradient launches"] = launches * 8 * n
            if columns:
                terms["column pass: query, key, grad out, gradients read again"] = (
                    n * (4 * qk + 2 * channels) * e
                )
                terms["gradients of the row pass written"] = n * (2 * qk + channels) * e
        flops = 4 * n * slots * (qk + channels)
    return DesignCosts(design, flops, sum(terms.values()), terms, slices, fits, maps)
