"""``python -m ccnet_edu.ops build | bench``: prebuild the operator, or benchmark it."""

from __future__ import annotations

import argparse
import sys


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
    rows = benchmark.run(cases, repeats=repeats, device=args.device)
    gflops = benchmark.matmul_gflops(device=rows and (args.device or _default_device()))
    print(benchmark.format_table(rows, gflops))
    if args.csv:
        benchmark.write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    return 0


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ccnet_edu.ops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the C++ (and, with nvcc, CUDA) operator")
    build.add_argument("--no-cuda", action="store_true", help="build the CPU operator only")
    build.add_argument("--verbose", action="store_true", help="show compiler output")
    build.set_defaults(func=_build)
    bench = sub.add_parser("bench", help="benchmark fused vs reference vs einsum vs bmm")
    bench.add_argument("--quick", action="store_true", help="one small map, 3 repeats")
    bench.add_argument("--csv", metavar="FILE", help="also write the rows as CSV")
    bench.add_argument("--repeats", type=int, default=None, help="timed repeats (median)")
    bench.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    bench.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
