"""``python -m ccnet_edu.ops build | bench``: prebuild the operator, or benchmark it."""

from __future__ import annotations

import argparse
import sys

from .._checks import OneLineArgumentParser, cli_int, cli_writable


def _build(args: argparse.Namespace) -> int:
    from . import BuildError, build_dir, find_nvcc, load, supported_isas

    print(f"build directory: {build_dir()}")
    print(f"CPU ISA levels this CPU runs: {', '.join(supported_isas())}")
    try:
        (info,) = load(cuda=False, verbose=args.verbose)
    except BuildError as error:
        print(f"CPU operator: FAILED: {error}")
        return 1
    print(
        f"CPU operator:  {info.library}  ({info.seconds:.1f} s, ISA {info.extra['isa']}, "
        f"self-test passed in {info.extra['self_test_seconds']:.2f} s)"
    )
    print(f"  flags: {' '.join(info.extra['cflags'])}")
    print(f"  threading: {info.threading}")
    if info.rebuilt:
        print(f"  rebuilt: {info.rebuilt}")
    if args.no_cuda:
        print("CUDA operator: not requested (--no-cuda)")
        return 0
    if find_nvcc() is None:
        print("CUDA operator: skipped: nvcc not found (set CUDA_HOME to build the GPU kernels)")
        return 0
    try:
        info = load(cuda=True, verbose=args.verbose)[-1]
    except BuildError as error:
        print(f"CUDA operator: FAILED: {error}")
        return 1
    tested = (
        f"self-test passed in {info.extra['self_test_seconds']:.2f} s"
        if "self_test_seconds" in info.extra
        else "not self-tested: no GPU here"
    )
    print(
        f"CUDA operator: {info.library}  ({info.seconds:.1f} s, nvcc {info.extra['nvcc']}, "
        f"TORCH_CUDA_ARCH_LIST={info.extra['arch']}, {tested})"
    )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from . import benchmark

    cases = benchmark.QUICK_CASES if args.quick else benchmark.DEFAULT_CASES
    repeats = args.repeats or (3 if args.quick else 7)
    device = args.device or _default_device()
    # The matmul rate before and after the timed runs: on a shared machine one
    # measurement can fall into a slow spell; the faster of the two is the yardstick.
    before = benchmark.matmul_gflops(repeats=10, device=device)
    rows = benchmark.run(cases, repeats=repeats, device=args.device)
    after = benchmark.matmul_gflops(repeats=10, device=device)
    print(benchmark.format_table(rows, max(before, after)))
    print(
        f"float32 matmul before / after the runs: {before:.0f} / {after:.0f} GFLOP/s "
        "(the faster is used above)"
    )
    if args.csv:
        benchmark.write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    return 0


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _cli_device(text: str) -> str:
    """An argparse ``type``: ``cpu``, ``cuda`` or ``cuda:N``, a device this machine has."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if (
        device is None
        or device.type not in ("cpu", "cuda")
        or (device.type == "cpu" and device.index is not None)
    ):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: no CUDA device on this machine")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
    return text


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="python -m ccnet_edu.ops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the C++ (and, with nvcc, CUDA) operator")
    build.add_argument("--no-cuda", action="store_true", help="build the CPU operator only")
    build.add_argument("--verbose", action="store_true", help="show compiler output")
    build.set_defaults(func=_build)
    bench = sub.add_parser("bench", help="benchmark fused vs reference vs einsum vs bmm")
    bench.add_argument("--quick", action="store_true", help="one small map, 3 repeats")
    bench.add_argument("--csv", metavar="FILE", help="also write the rows as CSV")
    bench.add_argument(
        "--repeats",
        type=cli_int(minimum=1, maximum=1000),
        default=None,
        help="timed repeats (median), 1 to 1000",
    )
    bench.add_argument(
        "--device",
        type=_cli_device,
        default=None,
        help="cpu, cuda or cuda:N (default: cuda if present)",
    )
    bench.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    if args.command == "bench":
        cli_writable(bench, "--csv", args.csv)  # before the benchmark runs, not after
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
