"""Side-by-side benchmark of four criss-cross attention implementations.

* ``fused``     -- the C++/CUDA operator (:func:`ccnet_edu.ops.criss_cross_attention`);
* ``reference`` -- the readable PyTorch version of this library;
* ``einsum``    -- mmcv's formulation (:func:`ccnet_edu.ops.baselines.einsum_criss_cross`);
* ``bmm``       -- the original CCNet pure-PyTorch code
  (:func:`ccnet_edu.ops.baselines.bmm_criss_cross`).

Each is timed in one run, forward alone and forward + backward, median (and
range) of ``repeats`` (CUDA events on a GPU, ``perf_counter`` on the CPU; the four are
timed in turn, one run of each per round, so that a slow spell of a shared
machine does not fall on one of them only), with its peak
memory (``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the allocator
events recorded by ``torch.profiler`` with ``profile_memory=True``, which see
every tensor allocated through c10's CPU allocator, the fused operator's internal
ATen tensors included (among them the backward's per-thread column panels, so the
fused forward + backward's peak grows with the thread count), but not the scratch
its CPU kernels take outside that allocator). Before anything is timed every implementation's
``out`` and attention map, and its gradients of query, key and value for one
random gradient of ``out``, are compared with the float64 reference.

Run ``python -m ccnet_edu.ops bench [--quick] [--csv FILE]``.
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from .. import functional as Fn
from .. import measure
from .._checks import (
    MAX_SEED,
    check_bool,
    check_choice,
    check_device,
    check_float,
    check_int,
    check_memory,
    check_writable,
)
from .._io import atomic_write_csv
from . import baselines

__all__ = [
    "Case",
    "Row",
    "IMPLS",
    "DEFAULT_CASES",
    "QUICK_CASES",
    "run",
    "format_table",
    "write_csv",
    "matmul_gflops",
    "flops",
    "machine",
    "add_level_arguments",
    "chosen_levels",
]

IMPLS = ("fused", "reference", "einsum", "bmm")
MODES = ("forward", "forward+backward")
# Timed repeats (and warm-up runs) at most: a median of a thousand runs is as settled as a
# median gets, and a typo (--repeats 1e9) must not keep a machine busy for days.
MAX_REPEATS = 1000
# The side of the square matmul that measures the arithmetic rate, at most.
MAX_MATMUL_SIZE = 16384


@dataclass(frozen=True)
class Case:
    """One problem size: batch, C' (query/key channels), C (value channels), H, W."""

    batch: int
    qk_channels: int
    channels: int
    height: int
    width: int

    def __post_init__(self) -> None:
        for name in ("batch", "qk_channels", "channels", "height", "width"):
            check_int(name, getattr(self, name), minimum=1)

    def __str__(self) -> str:
        return f"B={self.batch} C'={self.qk_channels} C={self.channels} {self.height}x{self.width}"

    def memory_bytes(self) -> int:
        """Bytes a run of this case needs at most, estimated before any tensor exists.

        The float64 reference's energies and attention and their gradients (the check before
        timing runs its backward), and the ``bmm`` baseline's padded
        (H + W) maps in float32 with their gradients, next to the inputs, the outputs and
        their gradients in float64 and float32.
        """
        maps = self.batch * self.height * self.width * (self.height + self.width)
        pixels = self.batch * self.height * self.width
        features = pixels * (2 * self.qk_channels + 2 * self.channels)
        return maps * (8 * 4 + 4 * 8) + features * (8 + 4 * 4)


#: The CCNet setting (769x769 crop, output stride 8, C=512, C'=64) and a larger map.
DEFAULT_CASES = [Case(1, 64, 512, 97, 97), Case(1, 64, 512, 128, 256)]
QUICK_CASES = [Case(1, 16, 128, 33, 41)]


@dataclass
class Row:
    """One measurement."""

    case: str
    impl: str
    mode: str
    median_ms: float
    ratio_vs_einsum: float  # einsum time / this time: > 1 means faster than einsum
    peak_mib: float
    # max |x - reference| / max |reference|, largest over the checked tensors x: out and the
    # attention map (forward), and the gradients of query, key and value (forward+backward)
    max_error: float
    min_ms: float = float("nan")  # fastest and slowest of the timed repeats
    max_ms: float = float("nan")


def flops(case: Case, mode: str) -> float:
    """Multiply-adds x 2 of the attention itself, no 1x1 convolutions.

    The closed forms of the book's chapter "What it costs" (one multiply-add = 2 FLOPs).

    Forward: energies (C') and aggregation (C) over H+W-1 positions per pixel;
    backward: dA (C), grad_value (C), grad_query and grad_key (C' each).
    """
    if not isinstance(case, Case):
        raise TypeError(f"case must be a Case, got {type(case).__name__}")
    check_choice("mode", mode, MODES)
    n = case.batch * case.height * case.width * (case.height + case.width - 1)
    forward = 2 * n * (case.qk_channels + case.channels)
    backward = 2 * n * (2 * case.qk_channels + 2 * case.channels)
    return forward + (backward if mode == "forward+backward" else 0)


def _implementations() -> dict[str, Callable]:
    from . import criss_cross_attention as fused

    return {
        "fused": fused,
        "reference": Fn.criss_cross_attention_reference,
        "einsum": baselines.einsum_criss_cross,
        "bmm": baselines.bmm_criss_cross,
    }


def _peak_mib(fn: Callable[[], None], device: torch.device) -> float:
    """Peak memory allocated *during* ``fn`` (inputs excluded), MiB: the CUDA allocator on a
    GPU, the CPU allocator's event log elsewhere (which sees the fused operator's ATen tensors,
    the backward's per-thread panels included, not scratch taken outside that allocator)."""
    method = "cuda" if device.type == "cuda" else "profiler"
    return measure.peak_memory_of(fn, device, method).peak_bytes / 2**20


def _make_step(impl: Callable, inputs, grad_out, mode: str) -> Callable[[], None]:
    query, key, value = inputs
    if mode == "forward":

        def step() -> None:
            with torch.no_grad():
                impl(query, key, value)

    else:
        leaves = [t.detach().requires_grad_() for t in inputs]

        def step() -> None:
            out, _ = impl(*leaves)
            out.backward(grad_out)
            for leaf in leaves:
                leaf.grad = None

    return step


def _outputs_and_grads(impl: Callable, inputs, grad_out) -> list[torch.Tensor]:
    """``out``, the attention map (B, H, W, H+W-1) and the gradients of query, key and value
    from ``out.backward(grad_out)``, as the timed forward+backward computes them; in float64
    on the CPU."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    out, attention = impl(*leaves)
    if attention.shape[-1] == attention.shape[1] + attention.shape[2]:  # [column | row]
        attention = Fn.attention_from_padded(attention)
    grads = torch.autograd.grad(out, leaves, grad_out)
    return [t.detach().double().cpu() for t in (out, attention, *grads)]


def run(
    cases: list[Case] | None = None,
    *,
    device: torch.device | str | None = None,
    repeats: int = 7,
    warmup: int = 2,
    progress: bool = True,
    seed: int = 0,
) -> list[Row]:
    """Benchmark every implementation on every case; returns one :class:`Row` each.

    Every argument is checked, and every case's memory (:meth:`Case.memory_bytes`)
    compared with :func:`~ccnet_edu._checks.memory_limit`, before anything is built.

    Raises:
        AssertionError: an implementation disagrees with the float64 reference on
            ``out``, the attention map or a gradient of query, key or value (checked
            before timing, relative error above 1e-4 in float32).
    """
    from tqdm.auto import tqdm

    cases = DEFAULT_CASES if cases is None else cases
    if isinstance(cases, (str, bytes)) or not isinstance(cases, (list, tuple)):
        raise TypeError(f"cases must be a list of Case, got {type(cases).__name__}")
    if not cases:
        raise ValueError("cases must not be empty")
    for k, case in enumerate(cases):
        if not isinstance(case, Case):
            raise TypeError(f"cases[{k}] must be a Case, got {type(case).__name__}")
    device = check_device("device", device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda[:N], got {str(device)!r}")
    repeats = check_int("repeats", repeats, minimum=1, maximum=MAX_REPEATS)
    warmup = check_int("warmup", warmup, minimum=0, maximum=MAX_REPEATS)
    check_bool("progress", progress)
    seed = check_int("seed", seed, minimum=0, maximum=MAX_SEED)
    for case in cases:
        check_memory(f"the case {case}", case.memory_bytes(), device, hint="a smaller case")
    impls = _implementations()
    # Built, loaded and self-tested here, with autograd enabled: the first call of the
    # fused op below runs inside torch.no_grad(), where the load's self-test (a backward
    # pass) would fail.
    from . import load

    load(cuda=device.type == "cuda")
    generator = torch.Generator().manual_seed(seed)
    rows: list[Row] = []
    steps = len(cases) * len(impls) * len(MODES)
    bar = tqdm(total=steps, disable=not progress, desc="bench")
    for case in cases:
        shape = (case.batch, case.qk_channels, case.height, case.width)
        query = torch.randn(shape, generator=generator)
        key = torch.randn(shape, generator=generator)
        value = torch.randn(
            (case.batch, case.channels, case.height, case.width), generator=generator
        )
        names = list(impls)
        grad_out = torch.randn(value.shape, generator=generator)
        expected = _outputs_and_grads(
            Fn.criss_cross_attention_reference,
            [t.double() for t in (query, key, value)],
            grad_out.double(),
        )
        inputs = [t.to(device) for t in (query, key, value)]
        grad_out = grad_out.to(device)

        # Correctness first: nothing is timed unless it computes the same thing. A forward
        # row's error is that of out and the attention map, a forward+backward row's also
        # that of the three gradients.
        errors = {}
        for name in names:
            got = _outputs_and_grads(impls[name], inputs, grad_out)
            each = [
                ((g - e).abs().max() / e.abs().max()).item()
                for g, e in zip(got, expected, strict=True)
            ]
            errors[name, "forward"], errors[name, "forward+backward"] = max(each[:2]), max(each)
            if max(each) > 1e-4:
                tensors = ("out", "attention", "grad query", "grad key", "grad value")
                worst = tensors[each.index(max(each))]
                raise AssertionError(
                    f"{name} differs from the reference on {case}: {worst} {max(each):.2e}"
                )
        del got, expected

        for mode in MODES:
            steps = {name: _make_step(impls[name], inputs, grad_out, mode) for name in names}
            timings = measure.time_in_turn(steps, device, repeats=repeats, warmup=warmup)
            peaks = {}
            for name in names:
                peaks[name] = _peak_mib(steps[name], device)
                bar.update()
            del steps
            for name in names:
                ms = timings[name].median_ms
                spread = {"min_ms": timings[name].min_ms, "max_ms": timings[name].max_ms}
                ratio = timings["einsum"].median_ms / ms
                rows.append(
                    Row(str(case), name, mode, ms, ratio, peaks[name], errors[name, mode], **spread)
                )
    bar.close()
    return rows


def matmul_gflops(size: int = 2048, repeats: int = 5, device: torch.device | str = "cpu") -> float:
    """Measured float32 throughput (GFLOP/s) of one large ``torch.mm``.

    A yardstick from the BLAS torch links on this machine, not the hardware's peak: a
    BLAS that does not use the CPU's full width runs below it, and small products
    tiled by hand can run above it. ``size`` at most :data:`MAX_MATMUL_SIZE`, ``repeats``
    at most :data:`MAX_REPEATS`.
    """
    size = check_int("size", size, minimum=1, maximum=MAX_MATMUL_SIZE)
    repeats = check_int("repeats", repeats, minimum=1, maximum=MAX_REPEATS)
    device = check_device("device", device)
    check_memory(f"a {size}^3 matmul", 3 * 4 * size * size, device)
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    ms = measure.time_ms(lambda: torch.mm(a, b), device, repeats=repeats, warmup=1).median_ms
    return 2 * size**3 / (ms * 1e-3) / 1e9


def machine() -> str:
    """One line naming what a table was measured on: CPU model, the ISA level the fused
    CPU operator was built for (and the levels the CPU runs), torch threads, torch
    version, date."""
    from . import _build, _state

    info = _state.get("cpu")
    isa = info.extra["isa"] if info is not None and not isinstance(info, Exception) else None
    built = f"{isa} ({_build.ISA_INSTRUCTIONS[isa]})" if isa else "not loaded"
    return (
        f"CPU: {measure.cpu_model()}; fused op built for {built}; this CPU runs "
        f"{', '.join(_build.supported_isas())}; {torch.get_num_threads()} torch threads; "
        f"torch {torch.__version__}; {datetime.date.today().isoformat()}"
    )


def format_table(rows: list[Row], gflops: float | None = None) -> str:
    """A Markdown table; with ``gflops`` also the time of the fused op's multiply-adds at
    that matmul rate, and the fused op's share of the rate."""
    if isinstance(rows, (str, bytes)) or not isinstance(rows, (list, tuple)):
        raise TypeError(f"rows must be a list of Row, got {type(rows).__name__}")
    if not all(isinstance(r, Row) for r in rows):
        raise TypeError("rows must be a list of Row (what run() returns)")
    if gflops is not None:
        gflops = check_float("gflops", gflops, minimum=0.0, exclusive_minimum=True)
    head = (
        "| case | mode | impl | median ms | min-max ms | einsum / impl | peak MiB "
        "| max rel. error |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.mode} | {r.impl} | {r.median_ms:.1f} "
            f"| {r.min_ms:.1f}-{r.max_ms:.1f} | {r.ratio_vs_einsum:.2f}x "
            f"| {r.peak_mib:.1f} | {r.max_error:.1e} |"
        )
    if gflops:
        lines.append("")
        lines.append(machine())
        lines.append(f"float32 matmul: {gflops:.0f} GFLOP/s")
        for r in rows:
            if r.impl != "fused":
                continue
            case = _parse_case(r.case)
            floor_ms = flops(case, r.mode) / (gflops * 1e9) * 1e3
            lines.append(
                f"fused {r.mode} at {r.case}: {flops(case, r.mode) / 1e9:.2f} GFLOP, at the "
                f"matmul rate {floor_ms:.1f} ms, measured {r.median_ms:.1f} ms "
                f"({floor_ms / r.median_ms:.0%} of the matmul rate)"
            )
    return "\n".join(lines)


def _parse_case(text: str) -> Case:
    parts = dict(p.split("=") for p in text.split()[:3])
    height, width = text.split()[3].split("x")
    return Case(int(parts["B"]), int(parts["C'"]), int(parts["C"]), int(height), int(width))


def write_csv(rows: list[Row], path: str) -> None:
    """Write the rows as CSV, atomically (a failed write leaves the old file whole)."""
    if isinstance(rows, (str, bytes)) or not isinstance(rows, (list, tuple)):
        raise TypeError(f"rows must be a list of Row, got {type(rows).__name__}")
    if not rows:
        raise ValueError("rows must not be empty: there is no header to write")
    if not all(isinstance(r, Row) for r in rows):
        raise TypeError("rows must be a list of Row (what run() returns)")
    path = check_writable("path", path)
    atomic_write_csv(path, list(asdict(rows[0])), (asdict(r) for r in rows))


def _check_parser(parser: object) -> None:
    if not isinstance(parser, argparse.ArgumentParser):
        raise TypeError(f"parser must be an argparse.ArgumentParser, got {type(parser).__name__}")


def add_level_arguments(
    parser: argparse.ArgumentParser, repeats: int, repeats_help: str, isa_help: str
) -> None:
    """Add the options the per-ISA-level benchmark scripts share: ``--repeats`` (1 to
    :data:`MAX_REPEATS`, default ``repeats``), ``--quick`` and ``--isa``.

    ``repeats_help`` and ``isa_help`` say what a repeat is and what a level does in the
    script; :func:`chosen_levels` reads ``--isa`` back.
    """
    from .._checks import cli_int
    from . import _build

    _check_parser(parser)
    check_int("repeats", repeats, minimum=1, maximum=MAX_REPEATS)
    parser.add_argument("--repeats", type=cli_int(1, MAX_REPEATS), default=repeats,
                        help=f"{repeats_help}, 1 to {MAX_REPEATS}")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="the benchmark's small map only")
    parser.add_argument("--isa", nargs="+", choices=list(_build.ISA_LEVELS),
                        help=f"{isa_help} (default: every level this CPU runs)")  # fmt: skip


def chosen_levels(parser: argparse.ArgumentParser, isa: list[str] | None) -> list[str]:
    """The ISA levels ``--isa`` asks for, by default every level this CPU runs.

    A level this CPU cannot run is a usage error (``parser.error``: one line, exit 2),
    before anything is compiled or timed.
    """
    from . import _build

    _check_parser(parser)
    if isa is not None and (
        not isinstance(isa, list) or not all(isinstance(level, str) for level in isa)
    ):
        raise TypeError(f"isa must be None or a list of level names, got {isa!r}")
    supported = _build.supported_isas()
    levels = isa or [level for level in _build.ISA_LEVELS if level in supported]
    missing = [level for level in levels if level not in supported]
    if missing:
        parser.error(f"--isa: this CPU does not run {', '.join(missing)} (it runs "
                     f"{', '.join(supported)})")  # fmt: skip
    return levels
