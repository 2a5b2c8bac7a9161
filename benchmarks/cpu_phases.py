"""Where the fused CPU operator's time goes: its forward and backward split into phases.

The operator carries per-phase clocks (``csrc/cca_cpu_phases.h``), off unless the op
``torch.ops.ccnet_edu.cpu_phase_times(True)`` switches them on. For every ISA level this
CPU runs (each in its own process, as ``benchmarks/cpu_isa.py`` does), this script times
forward + backward of the fused op at the benchmark's sizes with the clocks off (the
op's time) and then with them on, and reports per phase: its share of the wall time
(thread time / threads), its rate (GFLOP/s for the line products, GB/s for the softmax
against the memory bandwidth of a large copy), and the time outside the products:
layout copies, the softmax, the threads' waiting at the end of a sweep, the call's
allocations and conversions, and autograd's Python side. The yardsticks are measured
in the same run: ``torch.mm``'s rate, and the bandwidth of a 64 MiB ``copy_``.

Writes, under ``--out`` (default ``benchmarks/results``), ``cpu-phases.md`` (the
tables) and ``cpu-phases.csv`` (one row per level, size and phase: the figure's data).

Run ``python benchmarks/cpu_phases.py [--repeats N] [--threads N] [--out DIR] [--isa LEVEL ...]
[--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from ccnet_edu import measure
from ccnet_edu._checks import MAX_THREADS, OneLineArgumentParser, cli_int, cli_writable
from ccnet_edu._io import atomic_write_csv, atomic_write_text
from ccnet_edu.ops import benchmark

FIELDS = [
    "isa", "case", "phase", "kind", "ms", "share", "gflop_per_s", "gb_per_s",
    "matmul_gflops", "copy_gb_per_s", "fused_ms_clocks_off", "threads", "cpu",
]  # fmt: skip
#: Bytes of the copy that measures the memory bandwidth (each of source and target).
COPY_BYTES = 64 * 2**20
#: The products of each phase that is one, as multiply-adds per pixel and slot: the
#: closed forms of benchmark.flops split by phase (C' for energies and dQ/dK, C else).
PRODUCTS = {
    "forward: energies": lambda c: c.qk_channels,
    "forward: aggregation": lambda c: c.channels,
    "backward: dA = dO V^T": lambda c: c.channels,
    "backward: dV = A^T dO": lambda c: c.channels,
    "backward: dQ = dE K, dK = dE^T Q": lambda c: 2 * c.qk_channels,
}
#: Softmax phases: bytes per pixel and slot that they must move at least (float32):
#: forward reads the energies and writes the affinities; backward reads A and dA and
#: writes dE (its phase also moves dA and dE between the slots and the dense columns,
#: so its rate is a lower bound).
SOFTMAX_BYTES = {"forward: softmax": 8, "backward: softmax backward": 12}


def _kind(name: str) -> str:
    if any(name.startswith(p) for p in PRODUCTS):
        return "product"
    if any(name.startswith(p) for p in SOFTMAX_BYTES):
        return "softmax"
    return "other"


def _short(name: str) -> str:
    """A phase's name without its parenthesised detail."""
    return name.split(" (")[0]


def copy_gb_per_s(repeats: int = 10) -> float:
    """Bytes read and written per second by ``copy_`` of a 64 MiB float32 tensor."""
    source = torch.randn(COPY_BYTES // 4)
    target = torch.empty_like(source)
    ms = measure.time_ms(lambda: target.copy_(source), "cpu", repeats=repeats, warmup=2).median_ms
    return 2 * COPY_BYTES / (ms * 1e-3) / 1e9


def measure_level(cases: list[benchmark.Case], repeats: int) -> dict:
    """In this process (one ISA level): the phase times of every case, in milliseconds."""
    from ccnet_edu.ops import criss_cross_attention, load

    load(cuda=False)
    clocks = torch.ops.ccnet_edu.cpu_phase_times
    generator = torch.Generator().manual_seed(0)
    results = []
    matmul = benchmark.matmul_gflops(repeats=10)
    bandwidth = copy_gb_per_s()
    for case in cases:
        shape = (case.batch, case.qk_channels, case.height, case.width)
        leaves = [
            torch.randn(s, generator=generator).requires_grad_()
            for s in (shape, shape, (case.batch, case.channels, case.height, case.width))
        ]
        grad_out = torch.randn(leaves[2].shape, generator=generator)

        def step(leaves=leaves, grad_out=grad_out) -> None:
            out, _ = criss_cross_attention(*leaves)
            out.backward(grad_out)
            for leaf in leaves:
                leaf.grad = None

        clocks(False)
        off = measure.time_ms(step, "cpu", repeats=repeats, warmup=2).median_ms
        clocks(True)
        walls = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            walls.append((time.perf_counter() - start) * 1e3)
        times, names = clocks(False)
        results.append({
            "case": str(case),
            "phases": {n: t / 1e6 / repeats for n, t in zip(names, times.tolist(), strict=True)},
            "wall_ms": sum(walls) / repeats,
            "off_ms": off,
        })  # fmt: skip
    return {
        "threads": torch.get_num_threads(),
        "matmul_gflops": matmul,
        "copy_gb_per_s": bandwidth,
        "cpu": measure.cpu_model(),
        "cases": results,
    }


def breakdown(isa: str, level: dict) -> list[dict]:
    """The table rows of one level: one per phase and size, wall-time shares."""
    rows = []
    threads = level["threads"]
    for result in level["cases"]:
        case = benchmark._parse_case(result["case"])
        phases = result["phases"]
        pixel_slots = case.batch * case.height * case.width * (case.height + case.width - 1)
        wall = result["wall_ms"]
        entries = []
        in_sweeps = {"forward": 0.0, "backward": 0.0}
        for name, ms in phases.items():
            if "wall time" in name:
                continue
            direction = name.split(":")[0]
            in_sweeps[direction] += ms / threads
            entries.append((name, ms / threads))
        for direction in ("forward", "backward"):
            sweeps = phases[f"{direction}: wall time of the sweeps (calling thread)"]
            call = phases[f"{direction}: wall time of the call (calling thread)"]
            entries.append((f"{direction}: threads waiting at the end of a sweep",
                            sweeps - in_sweeps[direction]))  # fmt: skip
            entries.append((f"{direction}: outside the sweeps (allocation, input conversion)",
                            call - sweeps))  # fmt: skip
        calls = sum(phases[f"{d}: wall time of the call (calling thread)"]
                    for d in ("forward", "backward"))  # fmt: skip
        entries.append(("autograd and Python around the calls", wall - calls))
        for name, ms in entries:
            kind = _kind(name)
            gflops = gbs = float("nan")
            if kind == "product":
                per = next(f for p, f in PRODUCTS.items() if name.startswith(p))(case)
                gflops = 2 * pixel_slots * per / (ms * 1e-3) / 1e9
            elif kind == "softmax":
                per = next(b for p, b in SOFTMAX_BYTES.items() if name.startswith(p))
                gbs = pixel_slots * per / (ms * 1e-3) / 1e9
            rows.append({
                "isa": isa, "case": result["case"], "phase": name, "kind": kind, "ms": ms,
                "share": ms / wall, "gflop_per_s": gflops, "gb_per_s": gbs,
                "matmul_gflops": level["matmul_gflops"], "copy_gb_per_s": level["copy_gb_per_s"],
                "fused_ms_clocks_off": result["off_ms"], "threads": threads, "cpu": level["cpu"],
            })  # fmt: skip
        rows.append({
            "isa": isa, "case": result["case"], "phase": "total (clocks on)", "kind": "total",
            "ms": wall, "share": 1.0,
            "gflop_per_s": benchmark.flops(case, "forward+backward") / (wall * 1e-3) / 1e9,
            "gb_per_s": float("nan"), "matmul_gflops": level["matmul_gflops"],
            "copy_gb_per_s": level["copy_gb_per_s"], "fused_ms_clocks_off": result["off_ms"],
            "threads": threads, "cpu": level["cpu"],
        })  # fmt: skip
    return rows


def markdown(rows: list[dict], load: tuple[float, float] | None = None) -> str:
    """The breakdown as Markdown; ``load``: the 1-minute load average before and after the run."""
    lines = [f"CPU: {rows[0]['cpu']}; {rows[0]['threads']} threads; forward + backward, "
             "the phases' thread time / threads (so they add up to the wall time)", ""]  # fmt: skip
    if load is not None:
        lines[-1:] = [
            f"Load average (1 min) before / after the run: {load[0]:.1f} / {load[1]:.1f} on "
            f"{os.cpu_count()} logical CPUs: a load above the thread count means other work "
            "shared the cores, and the times below are then not the operator's alone.",
            "",
        ]
    for isa, case in dict.fromkeys((r["isa"], r["case"]) for r in rows):
        group = [r for r in rows if r["isa"] == isa and r["case"] == case]
        total = group[-1]
        outside = sum(r["ms"] for r in group if r["kind"] not in ("product", "total"))
        lines += [
            f"### {isa}, {case}",
            "",
            f"torch.mm {total['matmul_gflops']:.0f} GFLOP/s, copy_ "
            f"{total['copy_gb_per_s']:.1f} GB/s (read + written); fused forward + backward "
            f"{total['fused_ms_clocks_off']:.1f} ms with the clocks off, "
            f"{total['ms']:.1f} ms with them on ({total['gflop_per_s']:.0f} GFLOP/s); "
            f"outside the products {outside:.1f} ms = {outside / total['ms']:.0%} of the total",
            "",
            "| phase | ms | share | GFLOP/s (share of torch.mm) | GB/s (share of copy_) |",
            "|---|---|---|---|---|",
        ]
        for r in group[:-1]:
            rate = (f"{r['gflop_per_s']:.0f} ({r['gflop_per_s'] / r['matmul_gflops']:.0%})"
                    if r["kind"] == "product" else "")  # fmt: skip
            gbs = (f"{r['gb_per_s']:.1f} ({r['gb_per_s'] / r['copy_gb_per_s']:.0%})"
                   if r["kind"] == "softmax" else "")  # fmt: skip
            lines.append(f"| {r['phase']} | {r['ms']:.2f} | {r['share']:.1%} | {rate} | {gbs} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    benchmark.add_level_arguments(parser, 7, "runs per measurement", "levels to run")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--threads", type=cli_int(1, MAX_THREADS), default=torch.get_num_threads(),
                        help=f"torch threads, 1 to {MAX_THREADS}")  # fmt: skip
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = benchmark.QUICK_CASES if args.quick else benchmark.DEFAULT_CASES
    if args.worker:  # one level, in the process the parent started for it
        print(json.dumps(measure_level(cases, args.repeats)))
        return 0
    levels = benchmark.chosen_levels(parser, args.isa)
    cli_writable(parser, "--out", args.out, directory=True)  # before any level runs
    args.out.mkdir(parents=True, exist_ok=True)
    rows, load_before = [], os.getloadavg()[0]
    for isa in levels:
        print(f"== {isa}", file=sys.stderr, flush=True)
        command = [sys.executable, __file__, "--worker", "--repeats", str(args.repeats),
                   "--threads", str(args.threads)]  # fmt: skip
        command += ["--quick"] * args.quick
        env = {**os.environ, "CCNET_EDU_CPU_ISA": isa}
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        rows += breakdown(isa, json.loads(result.stdout.strip().splitlines()[-1]))
    atomic_write_csv(args.out / "cpu-phases.csv", FIELDS, rows)
    table = markdown(rows, (load_before, os.getloadavg()[0]))
    atomic_write_text(args.out / "cpu-phases.md", table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
