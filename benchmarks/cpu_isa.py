"""``python -m ccnet_edu.ops bench`` once for every ISA level this CPU runs.

The library picks the widest level the CPU supports; ``CCNET_EDU_CPU_ISA`` forces
another one. Each level runs in its own process (a process holds one build of the
operator), and within each run the four implementations are timed in turn, so the
comparable numbers across levels are the ratios to einsum and to the matrix-multiply
rate measured in the same run, not the milliseconds.

Writes, under ``--out`` (default ``benchmarks/results``):

* ``cpu-<isa>.md`` and ``cpu-<isa>.csv``: each run's table, as ``bench`` prints it;
* ``cpu-isa-summary.csv`` and ``.md``: per level and size, the fused op's speed-up over
  einsum (forward, forward + backward), its share of the matmul rate and its peak
  memory beside einsum's.

Run ``python benchmarks/cpu_isa.py [--repeats N] [--out DIR] [--isa LEVEL ...] [--quick]``.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

from ccnet_edu._checks import OneLineArgumentParser, cli_writable
from ccnet_edu._io import atomic_write_csv, atomic_write_text
from ccnet_edu.ops import benchmark

FIELDS = [
    "isa", "case", "forward_vs_einsum", "forward_backward_vs_einsum",
    "forward_backward_share_of_matmul", "fused_peak_mib", "einsum_peak_mib", "matmul_gflops",
    "cpu",
]  # fmt: skip


def run_level(isa: str, repeats: int, out: Path, quick: bool = False) -> tuple[str, list[dict]]:
    """Run the benchmark with the operator built for ``isa``; its stdout and CSV rows."""
    csv_path = out / f"cpu-{isa}.csv"
    env = {**os.environ, "CCNET_EDU_CPU_ISA": isa}
    command = [sys.executable, "-m", "ccnet_edu.ops", "bench", "--device", "cpu",
               "--repeats", str(repeats), "--csv", str(csv_path)] + ["--quick"] * quick  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    # bench's last line names the CSV it wrote: a path of this run, not a result
    text = "\n".join(
        line for line in result.stdout.strip().splitlines() if not line.startswith("wrote ")
    )
    atomic_write_text(out / f"cpu-{isa}.md", text + "\n")
    with open(csv_path, newline="") as handle:
        return text, list(csv.DictReader(handle))


def summarise(isa: str, text: str, rows: list[dict]) -> list[dict]:
    """One summary row per size from one level's run."""
    matmul = float(re.search(r"float32 matmul: ([\d.]+) GFLOP/s", text).group(1))
    cpu = re.search(r"^CPU: ([^;]*);", text, re.M).group(1)
    by = {(r["case"], r["impl"], r["mode"]): r for r in rows}
    summary = []
    for case in dict.fromkeys(r["case"] for r in rows):
        both = by[case, "fused", "forward+backward"]
        floor_ms = (
            benchmark.flops(benchmark._parse_case(case), "forward+backward") / (matmul * 1e9) * 1e3
        )
        summary.append({
            "isa": isa,
            "case": case,
            "forward_vs_einsum": float(by[case, "fused", "forward"]["ratio_vs_einsum"]),
            "forward_backward_vs_einsum": float(both["ratio_vs_einsum"]),
            "forward_backward_share_of_matmul": floor_ms / float(both["median_ms"]),
            "fused_peak_mib": max(float(by[case, "fused", m]["peak_mib"]) for m in benchmark.MODES),
            "einsum_peak_mib": max(
                float(by[case, "einsum", m]["peak_mib"]) for m in benchmark.MODES
            ),
            "matmul_gflops": matmul,
            "cpu": cpu,
        })  # fmt: skip
    return summary


def markdown(summary: list[dict]) -> str:
    lines = [
        f"CPU: {summary[0]['cpu']}",
        "",
        "| ISA level | case | forward vs einsum | forward+backward vs einsum "
        "| forward+backward, share of matmul rate "
        "| peak MiB fused / einsum, larger of the two modes |",
        "|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['isa']} | {s['case']} | {s['forward_vs_einsum']:.2f}x "
            f"| {s['forward_backward_vs_einsum']:.2f}x "
            f"| {s['forward_backward_share_of_matmul']:.0%} of {s['matmul_gflops']:.0f} GFLOP/s "
            f"| {s['fused_peak_mib']:.1f} / {s['einsum_peak_mib']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    benchmark.add_level_arguments(parser, 7, "timed repeats (median)", "levels to run")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    levels = benchmark.chosen_levels(parser, args.isa)
    cli_writable(parser, "--out", args.out, directory=True)  # before any level runs
    args.out.mkdir(parents=True, exist_ok=True)
    summary = []
    for isa in levels:
        print(f"== {isa}", flush=True)
        text, rows = run_level(isa, args.repeats, args.out, args.quick)
        print(text, flush=True)
        summary += summarise(isa, text, rows)
    atomic_write_csv(args.out / "cpu-isa-summary.csv", FIELDS, summary)
    table = markdown(summary)
    atomic_write_text(args.out / "cpu-isa-summary.md", table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
