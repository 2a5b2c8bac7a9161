"""``python -m ccnet_edu.analysis``: the comparison table at the CCNet setting.

Examples::

    python -m ccnet_edu.analysis                       # 97x97, C=512, C'=64, all models
    python -m ccnet_edu.analysis --csv table.csv --png table.png
    python -m ccnet_edu.analysis --sweep --png scaling.png   # scaling sweep instead

Every numeric option is checked when the command line is read, and the
``--csv`` / ``--png`` paths before any measurement: a bad value is a usage
error (one line on stderr, exit code 2).
"""

from __future__ import annotations

import argparse
import sys

import torch

from .._checks import OneLineArgumentParser, cli_device, cli_float, cli_int, cli_writable
from .._io import atomic_save_figure
from .compare import (
    _check_memory_of,
    _check_sweep_memory,
    comparison_table,
    format_claims,
    format_table,
    paper_candidates,
    paper_claims,
    scaling_sweep,
    write_csv,
)


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python -m ccnet_edu.analysis``, each validated by its type."""
    parser = OneLineArgumentParser(
        prog="python -m ccnet_edu.analysis",
        description="Measure FLOPs, saved bytes, peak memory and time of the attention blocks.",
    )
    parser.add_argument("--height", type=cli_int(1), default=None, help="map height (97)")
    parser.add_argument("--width", type=cli_int(1), default=None, help="map width (97)")
    parser.add_argument("--channels", type=cli_int(1), default=512, help="C (default 512)")
    parser.add_argument("--qk-channels", type=cli_int(1), default=64, help="C' (default 64)")
    parser.add_argument("--batch", type=cli_int(1), default=None, help="batch size (1)")
    parser.add_argument(
        "--repeats", type=cli_int(1, 1000), default=3, help="timed runs per model (median), <= 1000"
    )
    parser.add_argument(
        "--time-budget",
        type=cli_float(0.0, 86400.0, exclusive_minimum=True),
        default=None,
        help="seconds of timing per model (> 0, at most a day; 60)",
    )
    parser.add_argument("--no-time", action="store_true", help="skip timing")
    parser.add_argument("--no-peak", action="store_true", help="skip peak memory")
    parser.add_argument("--impl", default="auto", choices=["auto", "fused", "reference"])
    parser.add_argument(
        "--device", type=cli_device(), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--sweep", action="store_true", help="run the scaling sweep instead")
    parser.add_argument(
        "--sizes",
        type=cli_int(1),
        nargs="+",
        default=None,
        help="with --sweep: map sides (16 24 32 48 64 96 128)",
    )
    parser.add_argument(
        "--memory-limit-mb",
        type=cli_float(0.0, exclusive_minimum=True),
        default=None,
        help="with --sweep: skip runs predicted above this (1024)",
    )
    parser.add_argument("--csv", help="write the rows to this CSV file")
    parser.add_argument("--png", help="write a figure to this PNG file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _check_memory(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The memory the run needs, predicted before anything is allocated: a usage error
    (exit code 2, one line) when it exceeds what this machine can give one request."""
    device = torch.device(args.device)
    try:
        candidates = paper_candidates(
            args.channels, args.qk_channels, (2,) if args.sweep else (1, 2, 3), args.impl
        )
        if args.sweep:
            names = ("--memory-limit-mb", "--channels", "--sizes")
            _check_sweep_memory(
                candidates, args.channels, args.sizes, args.memory_limit_mb, device, names
            )
        else:
            shape = (args.batch, args.channels, args.height, args.width)
            what = (
                f"--batch {args.batch}, --channels {args.channels}, --height {args.height}, "
                f"--width {args.width}"
            )
            _check_memory_of(candidates, shape, device, what)
    except ValueError as err:
        parser.error(str(err))


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    cli_writable(parser, "--csv", args.csv)
    cli_writable(parser, "--png", args.png)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    sweep_only = {"--sizes": args.sizes, "--memory-limit-mb": args.memory_limit_mb}
    table_only = {
        "--height": args.height,
        "--width": args.width,
        "--batch": args.batch,
        "--time-budget": args.time_budget,
        "--no-peak": args.no_peak or None,
    }
    for option, value in (table_only if args.sweep else sweep_only).items():
        if value is not None:
            parser.error(f"{option} {'does not go' if args.sweep else 'goes only'} with --sweep")
    defaults = dict(
        height=97,
        width=97,
        batch=1,
        time_budget=60.0,
        sizes=[16, 24, 32, 48, 64, 96, 128],
        memory_limit_mb=1024.0,
    )
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    _check_memory(parser, args)
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
            atomic_save_figure(fig, args.png, dpi=120)
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
        atomic_save_figure(plot_comparison(rows, metrics), args.png, dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
