"""The comparison table and the scaling sweep, measured side by side in one run.

Every number in a row is measured on the module itself:

* ``gflops`` -- :func:`~ccnet_edu.analysis.flops.count_flops` (forward), run on
  the ``meta`` device (shapes only, no compute; identical to a real run); for
  the fused criss-cross operator, one call the counter cannot look into, that
  count is the formula it is taught (:func:`~ccnet_edu.analysis.flops.flop_formulas`),
  not a measurement;
* ``saved_mb`` -- :func:`~ccnet_edu.analysis.memory.saved_tensors`, every
  storage kept for backward, once, also on ``meta``;
* ``peak_mb`` -- :func:`~ccnet_edu.analysis.memory.peak_memory` of forward +
  backward on ``x``'s device: storage tracking on the CPU and on ``meta`` (the
  same storages on both; not an allocator reading: an operator's internal
  temporaries are not in it), the allocator's statistics on CUDA;
* ``time_s`` -- median wall time of ``repeats`` forward + backward runs after one
  plain untimed warm-up run, with the fastest and slowest run beside it
  (``time_low_s``, ``time_high_s``). :func:`comparison_table` times its
  candidates in turn (:func:`ccnet_edu.measure.time_in_turn`), so a slow spell
  of a shared machine falls on every row alike, not on one.

Closed forms (``gflops_formula``, ``map_mb``) sit beside the measurements for
comparison and are never used in their place.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from .._checks import (
    check_bool,
    check_callable,
    check_choice,
    check_device,
    check_feature_map,
    check_float,
    check_int,
    check_int_sequence,
    check_memory,
    check_positive_pair,
    check_str,
    check_writable,
    memory_limit,
)
from .._io import atomic_write_csv
from ..measure import Timing, time_in_turn, time_ms, time_once_ms
from .flops import axial_flops, count_flops, issa_flops, nonlocal_flops, rcca_flops
from .memory import MAP_KINDS, attention_map_bytes, peak_memory, saved_tensors

__all__ = [
    "Candidate",
    "Row",
    "paper_candidates",
    "measure",
    "comparison_table",
    "format_table",
    "paper_claims",
    "format_claims",
    "write_csv",
    "SweepPoint",
    "scaling_sweep",
]

MB = 2**20  # mebibyte; the tables say MiB


@dataclass
class Candidate:
    """A module to measure: a name, a builder and (if known) its closed-form FLOPs."""

    name: str
    build: Callable[[], nn.Module]
    formula_flops: Callable[[int, int], int] | None = None  # (H, W) -> FLOPs
    map_kind: str | None = None  # for attention_map_bytes
    recurrence: int = 1

    def __post_init__(self) -> None:
        check_str("name", self.name)
        check_callable("build", self.build)
        if self.formula_flops is not None:
            check_callable("formula_flops", self.formula_flops)
        if self.map_kind is not None:
            check_choice("map_kind", self.map_kind, MAP_KINDS)
        check_int("recurrence", self.recurrence, minimum=1)


@dataclass
class Row:
    """One line of the comparison table (sizes in MiB, time in seconds)."""

    model: str
    gflops: float
    gflops_formula: float | None
    map_mb: float | None
    saved_mb: float
    peak_mb: float | None
    time_s: float | None
    runs: int
    note: str = ""
    time_low_s: float | None = None  # the fastest and the slowest timed run
    time_high_s: float | None = None


_IMPLS = ("auto", "fused", "reference")
_INCLUDE = ("non-local", "rcca", "issa", "sa", "axial")


def _check_include(include: object) -> set[str]:
    if isinstance(include, (str, bytes)) or not isinstance(include, Iterable):
        raise TypeError(f"include must be a list of names from {_INCLUDE}, got {include!r}")
    names = list(include)
    for name in names:
        check_choice("include entries", name, _INCLUDE)
    if not names:
        raise ValueError(f"include must name at least one of {_INCLUDE}")
    return set(names)


def _resolve_impl(impl: str) -> str:
    """``"auto"``: ``"fused"`` if the criss-cross operator builds, else ``"reference"``."""
    check_choice("impl", impl, _IMPLS)
    if impl != "auto":
        return impl
    try:
        from .. import ops

        return "fused" if ops.is_available("cpu") else "reference"
    except Exception:  # noqa: BLE001 -- any build problem means: use the readable code
        return "reference"


def paper_candidates(
    channels: int = 512,
    qk_channels: int = 64,
    recurrences: Sequence[int] = (1, 2, 3),
    impl: str = "auto",
    block_size: tuple[int, int] = (8, 8),
    include: Iterable[str] = ("non-local", "rcca", "issa", "sa"),
) -> list[Candidate]:
    """The modules of the CCNet comparison, built like the paper's (CCNet, Sec. 3.3 and 4).

    * non-local: :class:`~ccnet_edu.NonLocal2d` in ``"ccnet"`` mode (same
      projections as CCA, dense pattern);
    * CCA / RCCA (R = 1, 2, 3): :class:`~ccnet_edu.RecurrentCrissCrossAttention`
      (R = 1 *is* one CCA block) with ``impl`` (``"auto"``: the fused operator
      when it builds);
    * ISSA: :class:`~ccnet_edu.InterlacedSparseSelfAttention`, block 8 x 8,
      key channels C' (as CCA; the authors' ISANet uses C / 2), value and
      output channels C, each step with the authors' two-layer query and key
      projections;
    * SA: :class:`~ccnet_edu.SqueezeAttention` with the paper's defaults
      (branches at C/4 channels, pooling 8);
    * axial (only when ``include`` names it): :class:`~ccnet_edu.axial.AxialAttention`,
      key channels C', one head, no positional terms: CCA's energies, two passes.
    """
    from ..cca import RecurrentCrissCrossAttention
    from ..issa import InterlacedSparseSelfAttention
    from ..nonlocal_block import NonLocal2d
    from ..sa import SqueezeAttention

    channels = check_int("channels", channels, minimum=1)
    qk_channels = check_int("qk_channels", qk_channels, minimum=1)
    recurrences = check_int_sequence("recurrences", recurrences, minimum=1)
    block_size = check_positive_pair("block_size", block_size)
    include = _check_include(include)
    impl = _resolve_impl(impl)
    out: list[Candidate] = []
    if "non-local" in include:
        out.append(
            Candidate(
                "non-local",
                lambda: NonLocal2d(channels, qk_channels),
                lambda h, w: nonlocal_flops(h, w, channels, qk_channels)["total"],
                "dense",
            )
        )
    if "rcca" in include:
        for r in recurrences:
            name = f"RCCA R={r}" + (" (= CCA)" if r == 1 else "") + f" [{impl}]"
            out.append(
                Candidate(
                    name,
                    lambda r=r: RecurrentCrissCrossAttention(
                        channels, recurrence=r, qk_channels=qk_channels, impl=impl
                    ),
                    lambda h, w, r=r: rcca_flops(h, w, channels, qk_channels, r)["total"],
                    "criss_cross",
                    r,
                )
            )
    if "issa" in include:
        out.append(
            Candidate(
                "ISSA 8x8",
                lambda: InterlacedSparseSelfAttention(
                    channels, block_size, key_channels=qk_channels
                ),
                lambda h, w: issa_flops(h, w, channels, block_size, qk_channels)["total"],
                "issa",
            )
        )
    if "sa" in include:
        out.append(Candidate("SA (pool 8)", lambda: SqueezeAttention(channels)))
    if "axial" in include:
        from ..axial import AxialAttention

        out.append(
            Candidate(
                "axial (2 passes)",
                lambda: AxialAttention(channels, qk_channels=qk_channels),
                lambda h, w: axial_flops(h, w, channels, qk_channels)["total"],
                "axial",
            )
        )
    return out


def _predicted_bytes(candidate: Candidate, shape: tuple[int, ...]) -> float:
    """Bytes one measurement of ``candidate`` on an input of ``shape`` needs, predicted on
    ``meta`` (nothing allocated): the peak of its forward + backward, its weights and their
    gradients, and the input.  Where the model cannot run on ``meta``, the non-local
    block's bound stands in (its ``N x N`` map, three times, and 20 maps of the input)."""
    inputs = math.prod(shape)
    try:
        with torch.device("meta"):
            module = candidate.build()
        weights = sum(p.numel() for p in module.parameters())
        peak = peak_memory(module, torch.empty(shape, device="meta")).peak_bytes
        return float(peak + 2 * 4 * weights + 4 * inputs)
    except (NotImplementedError, RuntimeError, OverflowError):
        pixels = shape[0] * shape[2] * shape[3]
        return 4.0 * (3 * pixels * shape[2] * shape[3] + 20 * inputs)


def _check_memory_of(
    candidates: Sequence[Candidate], shape: tuple[int, ...], device: torch.device, what: str
) -> None:
    """Refuse, before anything is allocated, a measurement that would not fit ``device``."""
    need, name = max((_predicted_bytes(c, shape), c.name) for c in candidates)
    check_memory(f"{what} ({name})", need, device)


def _check_sweep_memory(
    candidates: Sequence[Candidate],
    channels: int,
    sizes: Sequence[int],
    memory_limit_mb: float,
    device: torch.device,
    names: tuple[str, str, str] = ("memory_limit_mb", "channels", "size"),
) -> None:
    """The sweep's own limit fits ``device``, and so do its largest input and weights (they
    exist before a point's peak is predicted); ``names`` name the three in messages."""
    limit = memory_limit(device)
    if limit is not None and memory_limit_mb * MB > limit:
        raise ValueError(
            f"{names[0]} must be <= {limit / MB:,.0f} (the memory one request may use on "
            f"{device}: half the RAM, or 90% of a GPU's), got {memory_limit_mb:g}"
        )
    try:
        with torch.device("meta"):
            weights = max(sum(p.numel() for p in c.build().parameters()) for c in candidates)
    except (RuntimeError, OverflowError):  # sizes no tensor can have
        weights = float("inf")
    check_memory(
        f"the sweep's largest input ({names[1]} {channels}, {names[2]} {max(sizes)}) and weights",
        4.0 * (channels * max(sizes) ** 2 + 2 * weights),
        device,
    )


def _meta_copy(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).to("meta")


def _on_meta(fn: Callable[[nn.Module, torch.Tensor], object], module: nn.Module, x: torch.Tensor):
    """Run a shape-only measurement on ``meta``; fall back to the real device if it cannot."""
    try:
        return fn(_meta_copy(module), x.to("meta"))
    except (NotImplementedError, RuntimeError):
        return fn(module, x)


def _step(module: nn.Module, x: torch.Tensor) -> None:
    x = x.detach().requires_grad_(True)
    out = module(x)
    out.sum().backward()


def _time_step(
    module: nn.Module, x: torch.Tensor, repeats: int, warmup: int, budget_s: float | None = None
) -> Timing:
    """Forward + backward of ``module`` on ``x`` timed ``repeats`` times after ``warmup`` runs."""
    timing = time_ms(
        lambda: _step(module, x), x.device, repeats=repeats, warmup=warmup, budget_s=budget_s
    )
    for p in module.parameters():
        p.grad = None
    return timing


def measure(
    candidate: Candidate,
    x: torch.Tensor,
    repeats: int = 3,
    timing: bool = True,
    peak: bool = True,
    time_budget: float | None = None,
) -> Row:
    """Measure one candidate on input ``x`` (B, C, H, W); see the module docstring.

    ``time_budget`` (seconds) stops the timing repeats early once exceeded
    (at least one timed run is always made); the row records how many ran.
    """
    if not isinstance(candidate, Candidate):
        raise TypeError(f"candidate must be a Candidate, got {type(candidate).__name__}")
    check_feature_map("x", x)
    repeats = check_int("repeats", repeats, minimum=1)
    check_bool("timing", timing)
    check_bool("peak", peak)
    if time_budget is not None:
        check_float("time_budget", time_budget, minimum=0.0, exclusive_minimum=True)
    module = _build(candidate, x.device)
    height, width = x.shape[2:]
    batch = x.shape[0]

    flops = _on_meta(count_flops, module, x)
    saved = _on_meta(lambda m, t: saved_tensors(m, t).total_bytes, module, x)
    formula = candidate.formula_flops(height, width) * batch if candidate.formula_flops else None
    map_bytes = (
        candidate.recurrence
        * attention_map_bytes(candidate.map_kind, height, width, batch, x.dtype)
        if candidate.map_kind
        else None
    )
    peak_bytes = peak_memory(module, x).peak_bytes if peak else None

    # A plain warm-up run: the peak-memory run above runs under a dispatch mode.
    timed = _time_step(module, x, repeats, 1, time_budget) if timing else None
    return Row(
        model=candidate.name,
        gflops=flops / 1e9,
        gflops_formula=None if formula is None else formula / 1e9,
        map_mb=None if map_bytes is None else map_bytes / MB,
        saved_mb=saved / MB,
        peak_mb=None if peak_bytes is None else peak_bytes / MB,
        time_s=None if timed is None else timed.median_ms / 1e3,
        runs=0 if timed is None else timed.runs,
        time_low_s=None if timed is None else timed.min_ms / 1e3,
        time_high_s=None if timed is None else timed.max_ms / 1e3,
    )


def _build(candidate: Candidate, device: torch.device) -> nn.Module:
    """The candidate's module on ``device``, seeded, gamma != 0 so that the attention matters."""
    torch.manual_seed(0)
    module = candidate.build().to(device)
    if hasattr(module, "cca"):
        nn.init.constant_(module.cca.gamma, 0.5)
    elif hasattr(module, "gamma"):
        nn.init.constant_(module.gamma, 0.5)
    return module


def _time_in_turn(
    candidates: Sequence[Candidate],
    rows: list[Row],
    x: torch.Tensor,
    repeats: int,
    time_budget: float | None,
) -> list[Row]:
    """``rows`` with the candidates' forward + backward timed in turn (one plain warm-up each).

    ``time_budget`` (seconds) caps the number of rounds by the warm-up's duration (at least one
    round is always timed).
    """
    modules = {c.name: _build(c, x.device) for c in candidates}
    steps = {name: (lambda m=m: _step(m, x)) for name, m in modules.items()}
    round_s = sum(time_once_ms(step, x.device) for step in steps.values()) / 1e3  # the warm-up
    if time_budget is not None:
        repeats = max(1, min(repeats, int(time_budget // max(round_s, 1e-9))))
    timings = time_in_turn(steps, x.device, repeats=repeats, warmup=0)
    for module in modules.values():
        for p in module.parameters():
            p.grad = None
    return [
        dataclasses.replace(
            row,
            time_s=timings[row.model].median_ms / 1e3,
            runs=timings[row.model].runs,
            time_low_s=timings[row.model].min_ms / 1e3,
            time_high_s=timings[row.model].max_ms / 1e3,
        )
        for row in rows
    ]


def comparison_table(
    height: int = 97,
    width: int = 97,
    channels: int = 512,
    qk_channels: int = 64,
    batch: int = 1,
    device: str | torch.device = "cpu",
    repeats: int = 3,
    timing: bool = True,
    peak: bool = True,
    impl: str = "auto",
    recurrences: Sequence[int] = (1, 2, 3),
    include: Iterable[str] = ("non-local", "rcca", "issa", "sa"),
    time_budget: float | None = 60.0,
    progress: bool = True,
) -> list[Row]:
    """The comparison at the CCNet setting (one 97 x 97 map, C = 512, C' = 64) by default."""
    from tqdm.auto import tqdm

    for name, value in (
        ("height", height),
        ("width", width),
        ("channels", channels),
        ("qk_channels", qk_channels),
        ("batch", batch),
        ("repeats", repeats),
    ):
        check_int(name, value, minimum=1)
    device = check_device("device", device)
    for name, value in (("timing", timing), ("peak", peak), ("progress", progress)):
        check_bool(name, value)
    check_choice("impl", impl, _IMPLS)
    check_int_sequence("recurrences", recurrences, minimum=1)
    _check_include(include)
    if time_budget is not None:
        check_float("time_budget", time_budget, minimum=0.0, exclusive_minimum=True)
    candidates = paper_candidates(channels, qk_channels, recurrences, impl, include=include)
    _check_memory_of(
        candidates,
        (batch, channels, height, width),
        device,
        f"measuring batch {batch}, channels {channels}, height {height}, width {width}",
    )
    torch.manual_seed(0)
    x = torch.randn(batch, channels, height, width, device=device)
    rows = []
    bar = tqdm(candidates, desc="measuring", disable=not progress)
    for candidate in bar:
        bar.set_postfix_str(candidate.name)
        rows.append(measure(candidate, x, repeats, False, peak, time_budget))
    # Timed in turn, one run of each candidate per round, so that a slow spell of the machine
    # falls on every row alike instead of on the one being timed.
    return _time_in_turn(candidates, rows, x, repeats, time_budget) if timing else rows


def _check_rows(rows: object, kinds: type | tuple[type, ...]) -> None:
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise TypeError(f"rows must be a list of rows, got {type(rows).__name__}")
    if len(rows) == 0:
        raise ValueError("rows must not be empty")
    for k, row in enumerate(rows):
        if not isinstance(row, kinds):
            raise TypeError(f"rows[{k}] must be a measured row, got {type(row).__name__}")


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _fmt_ms(seconds: float) -> str:
    """``seconds`` in milliseconds with three significant digits: ``0.01234`` -> ``"12.3"``."""
    value = check_float("seconds", seconds, minimum=0.0) * 1e3
    if value == 0:
        return "0.00"
    decimals = max(0, 2 - math.floor(math.log10(value)))
    text = f"{value:,.{decimals}f}"
    if decimals and float(text.replace(",", "")) >= 10 ** (3 - decimals):  # rounded up a digit
        text = f"{value:,.{decimals - 1}f}"
    return text


def _fmt_time(row: Row) -> str:
    if row.time_s is None:
        return "-"
    if row.time_low_s is None or row.time_high_s is None:
        return f"{_fmt_ms(row.time_s)} (n={row.runs})"
    low, high = _fmt_ms(row.time_low_s), _fmt_ms(row.time_high_s)
    return f"{_fmt_ms(row.time_s)} [{low}–{high}] (n={row.runs})"


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table of :func:`comparison_table` rows (times in ms, three significant digits:
    the median, the fastest and the slowest run, and the number of runs)."""
    _check_rows(rows, Row)
    header = [
        "model",
        "GFLOPs",
        "GFLOPs formula",
        "attn map MiB",
        "saved MiB",
        "peak MiB",
        "time ms",
    ]
    body = [
        [
            r.model,
            _fmt(r.gflops, 2),
            _fmt(r.gflops_formula, 2),
            _fmt(r.map_mb, 1),
            _fmt(r.saved_mb, 1),
            _fmt(r.peak_mb, 1),
            _fmt_time(r),
        ]
        for r in rows
    ]
    widths = [max(len(line[k]) for line in [header, *body]) for k in range(len(header))]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in pairs)

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def paper_claims(rows: Sequence[Row], recurrence: int = 2) -> dict[str, float]:
    """CCNet's two claims, from measured rows: non-local vs RCCA with ``recurrence`` loops.

    Returns ``flops_reduction`` (1 - RCCA/non-local, paper: about 0.85),
    ``saved_ratio`` and ``peak_ratio`` (non-local / RCCA, paper: about 11 for
    GPU memory), and ``time_ratio``.
    """
    _check_rows(rows, Row)
    recurrence = check_int("recurrence", recurrence, minimum=1)
    dense = next((r for r in rows if r.model == "non-local"), None)
    rcca = next((r for r in rows if r.model.startswith(f"RCCA R={recurrence}")), None)
    if dense is None or rcca is None:
        raise ValueError(
            f"rows must hold a 'non-local' row and an 'RCCA R={recurrence}' row, got "
            f"{[r.model for r in rows]}"
        )
    claims = {
        "flops_reduction": 1 - rcca.gflops / dense.gflops,
        "saved_ratio": dense.saved_mb / rcca.saved_mb,
    }
    if dense.peak_mb and rcca.peak_mb:
        claims["peak_ratio"] = dense.peak_mb / rcca.peak_mb
    if dense.time_s and rcca.time_s:
        claims["time_ratio"] = dense.time_s / rcca.time_s
    return claims


PAPER_SETTING = "97 x 97, C = 512"


def format_claims(claims: dict[str, float], recurrence: int = 2) -> str:
    """The claims as sentences next to the paper's figures, which the paper gives at its
    setting (:data:`PAPER_SETTING`, for RCCA with R = 2), whatever the rows' setting."""
    if not isinstance(claims, dict):
        raise TypeError(f"claims must be the dict of paper_claims, got {type(claims).__name__}")
    for key in ("flops_reduction", "saved_ratio"):
        if key not in claims:
            raise ValueError(f"claims must hold {key!r} (see paper_claims), got {sorted(claims)}")
    recurrence = check_int("recurrence", recurrence, minimum=1)
    reduction = claims["flops_reduction"]
    flop_ratio = f"{1 / (1 - reduction):.2f}x" if reduction < 1 else "unbounded"
    lines = [
        f"FLOPs: RCCA (R={recurrence}) needs {100 * reduction:.1f}% fewer "
        f"than non-local (paper, at {PAPER_SETTING}: about 85%), non-local / RCCA = {flop_ratio}",
        f"Saved for backward: non-local / RCCA = {claims['saved_ratio']:.1f}x",
    ]
    if "peak_ratio" in claims:
        lines.append(
            f"Peak memory (forward + backward): non-local / RCCA = {claims['peak_ratio']:.1f}x "
            f"(paper, at {PAPER_SETTING}: about 11x less GPU memory)"
        )
    if "time_ratio" in claims:
        lines.append(f"Time (forward + backward): non-local / RCCA = {claims['time_ratio']:.2f}x")
    return "\n".join(lines)


def write_csv(rows: Sequence[Row | SweepPoint], path: str | Path) -> None:
    """Write rows (comparison or sweep) to a CSV file with a header."""
    _check_rows(rows, (Row, SweepPoint))
    rows = list(rows)
    if len({type(r) for r in rows}) > 1:
        raise ValueError("rows must be all comparison rows or all sweep points, not a mix")
    path = check_writable("path", path)
    atomic_write_csv(path, [fld.name for fld in fields(rows[0])], (asdict(r) for r in rows))


# ---------------------------------------------------------------------------
# Scaling sweep
# ---------------------------------------------------------------------------


@dataclass
class SweepPoint:
    """One (model, size) measurement of :func:`scaling_sweep`."""

    model: str
    size: int  # feature map is size x size
    n: int  # N = size^2 positions
    gflops: float
    saved_mb: float
    peak_mb: float | None  # None when skipped (over the memory limit) or not measured
    time_s: float | None
    note: str = ""


def scaling_sweep(
    sizes: Sequence[int] = (16, 24, 32, 48, 64, 96, 128),
    channels: int = 64,
    qk_channels: int = 8,
    include: Iterable[str] = ("non-local", "rcca"),
    recurrences: Sequence[int] = (2,),
    impl: str = "auto",
    memory_limit_mb: float = 1024.0,
    timing: bool = True,
    repeats: int = 3,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> list[SweepPoint]:
    """FLOPs, saved bytes, peak memory and time against the map size, side by side.

    FLOPs (for the fused operator, its formula: see the module docstring) and
    saved bytes are measured on ``meta`` for every size.  Peak
    memory is first measured on ``meta`` (storage tracking needs no data);
    where it exceeds ``memory_limit_mb`` the real forward + backward is
    skipped and the point says so in ``note``.  Otherwise peak memory and
    time are measured on ``device``.
    """
    from tqdm.auto import tqdm

    check_int_sequence("sizes", sizes, minimum=1)
    check_int("channels", channels, minimum=1)
    check_int("qk_channels", qk_channels, minimum=1)
    _check_include(include)
    check_int_sequence("recurrences", recurrences, minimum=1)
    check_choice("impl", impl, _IMPLS)
    check_float("memory_limit_mb", memory_limit_mb, minimum=0.0, exclusive_minimum=True)
    check_bool("timing", timing)
    check_int("repeats", repeats, minimum=1)
    device = check_device("device", device)
    check_bool("progress", progress)

    candidates = paper_candidates(channels, qk_channels, recurrences, impl, include=include)
    _check_sweep_memory(candidates, channels, sizes, memory_limit_mb, device)
    points: list[SweepPoint] = []
    jobs = [(c, s) for s in sizes for c in candidates]
    for candidate, size in tqdm(jobs, desc="sweep", disable=not progress):
        torch.manual_seed(0)
        module = candidate.build().to(device)
        x = torch.randn(1, channels, size, size, device=device)
        flops = _on_meta(count_flops, module, x)
        saved = _on_meta(lambda m, t: saved_tensors(m, t).total_bytes, module, x)
        predicted = _on_meta(lambda m, t: peak_memory(m, t).peak_bytes, module, x)
        peak_mb = time_s = None
        note = ""
        if predicted / MB > memory_limit_mb:
            note = (
                f"skipped: forward+backward needs {predicted / MB:,.0f} MiB "
                f"(measured on meta) > limit {memory_limit_mb:,.0f} MiB"
            )
        else:
            peak_mb = peak_memory(module, x).peak_bytes / MB
            if timing:  # the peak memory run was the warm-up
                time_s = _time_step(module, x, repeats, warmup=0).median_ms / 1e3
        points.append(
            SweepPoint(
                candidate.name, size, size * size, flops / 1e9, saved / MB, peak_mb, time_s, note
            )
        )
    return points


def fit_exponent(ns: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of log(value) against log(N): the growth exponent."""
    for name, seq in (("ns", ns), ("values", values)):
        if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence):
            raise TypeError(f"{name} must be a list of positive numbers, got {type(seq).__name__}")
        for k, v in enumerate(seq):
            check_float(f"{name}[{k}]", v, minimum=0.0, exclusive_minimum=True)
    if len(ns) != len(values):
        raise ValueError(f"ns and values must have one length, got {len(ns)} and {len(values)}")
    if len(set(ns)) < 2:
        raise ValueError(f"ns must hold at least two different sizes, got {list(ns)}")
    xs = [math.log(n) for n in ns]
    ys = [math.log(v) for v in values]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    covariance = sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True))
    return covariance / sum((a - mx) ** 2 for a in xs)


__all__ += ["fit_exponent"]
