"""``python -m ccnet_edu.analysis``: the comparison table at the CCNet setting.

Examples::

    python -m ccnet_edu.analysis                       # 97x97, C=512, C'=64, all models
    python -m ccnet_edu.analysis --csv table.csv --png table.png
    python -m ccnet_edu.analysis --sweep --png scaling.png   # scaling sweep instead
"""

from __future__ import annotations

import argparse
import sys

import torch

from .compare import (
    comparison_table,
    format_claims,
    format_table,
    paper_claims,
    scaling_sweep,
    write_csv,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ccnet_edu.analysis",
        description="Measure FLOPs, saved bytes, peak memory and time of the attention blocks.",
    )
    parser.add_argument("--height", type=int, default=97)
    parser.add_argument("--width", type=int, default=97)
    parser.add_argument("--channels", type=int, default=512, help="C (default 512)")
    parser.add_argument("--qk-channels", type=int, default=64, help="C' (default 64)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per model (median)")
    parser.add_argument(
        "--time-budget", type=float, default=60.0, help="seconds of timing per model"
    )
    parser.add_argument("--no-time", action="store_true", help="skip timing")
    parser.add_argument("--no-peak", action="store_true", help="skip peak memory")
    parser.add_argument("--impl", default="auto", choices=["auto", "fused", "reference"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sweep", action="store_true", help="run the scaling sweep instead")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 24, 32, 48, 64, 96, 128])
    parser.add_argument("--memory-limit-mb", type=float, default=1024.0)
    parser.add_argument("--csv", help="write the rows to this CSV file")
    parser.add_argument("--png", help="write a figure to this PNG file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    for name in ("height", "width", "channels", "qk_channels", "batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")

    if args.sweep:
        points = scaling_sweep(
            args.sizes,
            channels=args.channels,
            qk_channels=args.qk_channels,
            impl=args.impl,
            memory_limit_mb=args.memory_limit_mb,
            timing=not args.no_time,
            repeats=args.repeats,
            device=args.device,
            progress=not args.quiet,
        )
        for p in points:
            print(
                f"{p.model:28s} {p.size:4d}^2  GFLOPs {p.gflops:9.3f}  saved {p.saved_mb:9.1f} MiB"
                f"  peak {p.peak_mb if p.peak_mb is None else round(p.peak_mb, 1)} MiB"
                f"  time {p.time_s if p.time_s is None else round(p.time_s, 3)} s  {p.note}"
            )
        if args.csv:
            write_csv(points, args.csv)
        if args.png:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            from .plots import plot_scaling

            fig, axes = plt.subplots(1, 4, figsize=(20, 4))
            for ax, metric in zip(axes, ["gflops", "saved_mb", "peak_mb", "time_s"], strict=True):
                plot_scaling(points, metric, ax=ax)
            fig.tight_layout()
            fig.savefig(args.png, dpi=120)
        return 0

    rows = comparison_table(
        args.height,
        args.width,
        args.channels,
        args.qk_channels,
        args.batch,
        device=args.device,
        repeats=args.repeats,
        timing=not args.no_time,
        peak=not args.no_peak,
        impl=args.impl,
        time_budget=args.time_budget,
        progress=not args.quiet,
    )
    print(
        f"One {args.height}x{args.width} map, batch {args.batch}, C={args.channels}, "
        f"C'={args.qk_channels}, {torch.get_default_dtype()}, device {args.device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(format_table(rows))
    print()
    print(format_claims(paper_claims(rows)))
    if args.csv:
        write_csv(rows, args.csv)
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        from .plots import plot_comparison

        metrics = ["gflops", "saved_mb"] + (["peak_mb"] if not args.no_peak else [])
        metrics += [] if args.no_time else ["time_s"]
        plot_comparison(rows, metrics).savefig(args.png, dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
