"""The operator's own register tile against the BLAS torch ships, on its line products.

Every step of the CPU operator is a small matrix product over one line of the map
(``line_product`` in ``csrc/cca_cpu_kernels.h``). Could the BLAS that torch links
(MKL's ``sgemm`` on x86-64 wheels) compute those products faster than the own tile?
This script compiles ``line_product`` for every ISA level the CPU runs, next to a
function that calls ``sgemm_`` for the same products, and times all of them in turn
in one process on the shapes of the operator's sweeps at the benchmark's sizes:

* energies, ``Q_i K_i^T``: (W x C') times (C' x W), the key read transposed in place;
* aggregation, ``A_i V_i``: (W x W) times (W x C) (each operand dense here; in the
  operator the row affinities are read with the attention map's row stride H + W - 1);
* the column versions of both, with H for W.

Lines are split over threads by ``at::parallel_for`` with the operator's grain, and
each ``sgemm_`` call runs on the thread that makes it (MKL called inside an OpenMP
parallel region does not start threads of its own), so both sides parallelise the
same way. Run ``python benchmarks/line_products.py [--threads N] [--out FILE] [--isa LEVEL ...]
[--quick]``; the Markdown table goes to stdout and, with ``--out``, to a file.
"""

from __future__ import annotations

import datetime
import functools
import importlib.util
import sys
from pathlib import Path

import torch
from torch.utils import cpp_extension

from ccnet_edu import measure
from ccnet_edu._checks import MAX_THREADS, OneLineArgumentParser, cli_int, cli_writable
from ccnet_edu._io import atomic_write_text
from ccnet_edu.ops import _build, benchmark

SOURCE = r"""
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "cca_cpu_kernels.h"

extern "C" {
// The Fortran BLAS entry point, as torch's ATen/native/CPUBlas.cpp declares it.
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
}

namespace {
using ccnet_edu::cpu::Matrix;

// Line n of a batch: out (rows x cols, row stride out_ld), a (rows x depth, row stride
// a_ld), b (depth x cols) read as b_t^T when b_t is given as (cols x depth).
struct Lines {
  float *out; const float *a, *b;
  int64_t count, rows, cols, depth, out_ld, a_ld, b_ld;
  bool b_transposed;
  int64_t out_step, a_step, b_step;
};

Lines lines(at::Tensor out, at::Tensor a, at::Tensor b, bool b_transposed) {
  // out (N, rows, >= cols), a (N, rows, >= depth), b (N, depth, cols) or (N, cols, depth)
  const int64_t depth = b_transposed ? b.size(2) : b.size(1);
  return {out.data_ptr<float>(), a.data_ptr<float>(), b.data_ptr<float>(),
          out.size(0), out.size(1), b_transposed ? b.size(1) : b.size(2), depth,
          out.stride(1), a.stride(1), b.stride(1), b_transposed,
          out.stride(0), a.stride(0), b.stride(0)};
}

int64_t grain(const Lines& l) {
  return std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, l.rows * l.cols * l.depth));
}

void tile_lines(at::Tensor out, at::Tensor a, at::Tensor b, bool b_transposed) {
  const Lines l = lines(out, a, b, b_transposed);
  at::parallel_for(0, l.count, grain(l), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const Matrix<float> o{l.out + n * l.out_step, l.rows, l.cols, l.out_ld, 1};
      const Matrix<const float> x{l.a + n * l.a_step, l.rows, l.depth, l.a_ld, 1};
      const Matrix<const float> y =
          l.b_transposed ? Matrix<const float>{l.b + n * l.b_step, l.depth, l.cols, 1, l.b_ld}
                         : Matrix<const float>{l.b + n * l.b_step, l.depth, l.cols, l.b_ld, 1};
      ccnet_edu::cpu::line_product(o, x, y, false);
    }
  });
}

// Row-major out = a b is column-major out^T = b^T a^T: sgemm with b first.
bool has_blas() { return sgemm_ != nullptr; }

void blas_lines(at::Tensor out, at::Tensor a, at::Tensor b, bool b_transposed) {
  TORCH_CHECK(has_blas(), "this torch build exports no sgemm_");
  const Lines l = lines(out, a, b, b_transposed);
  at::parallel_for(0, l.count, grain(l), [&](int64_t begin, int64_t end) {
    const int m = l.cols, n = l.rows, k = l.depth;
    const int lda = l.b_ld, ldb = l.a_ld, ldc = l.out_ld;
    const float one = 1.0f, zero = 0.0f;
    const char transa = l.b_transposed ? 'T' : 'N', transb = 'N';
    for (int64_t line = begin; line < end; ++line)
      sgemm_(&transa, &transb, &m, &n, &k, &one, l.b + line * l.b_step, &lda,
             l.a + line * l.a_step, &ldb, &zero, l.out + line * l.out_step, &ldc);
  });
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("tile_lines", &tile_lines);
  m.def("blas_lines", &blas_lines);
  m.def("has_blas", &has_blas);
}
"""


def build(isa: str):
    """The two line-product functions, compiled with the operator's flags for ``isa``.

    Built and loaded as the operator is (:func:`ccnet_edu.ops._build.load_verified`): in a
    directory keyed by the source, the flags and ``csrc/``, and loaded only once the
    library matches the digest recorded when it was built and checked.
    """
    cflags, ldflags = _build.cpu_flags(isa)
    key = _build.content_key(
        [SOURCE, torch.__version__, *cflags], _build._all_sources(_build.csrc_dir())
    )[:16]
    name = f"line_products_{isa.replace('-', '_')}"
    directory = _build.build_dir() / f"line_products-{isa}-{key}"
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / f"{name}.cpp"
    if not source.is_file() or source.read_text() != SOURCE:
        atomic_write_text(source, SOURCE)

    def compile_into(staging: Path) -> None:
        _build._ninja_build(
            cpp_extension, name, [str(source)], str(_build.csrc_dir()), staging, cuda=False,
            verbose=False, cflags=cflags + ["-std=c++20"], ldflags=ldflags, cuda_cflags=[],
            arch=None,
        )  # fmt: skip

    def load(library: Path):
        spec = importlib.util.spec_from_file_location(name, library)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    module, _ = _build.load_verified(directory / f"{name}.so", compile_into, load)
    return module


def shapes(case: benchmark.Case) -> dict[str, tuple[int, int, int, int, bool]]:
    """name -> (lines, rows, cols, depth, b transposed) of the operator's forward sweeps."""
    H, W, Ck, C = case.height, case.width, case.qk_channels, case.channels
    return {
        "row energies Q_i K_i^T": (case.batch * H, W, W, Ck, True),
        "column energies Q_j K_j^T": (case.batch * W, H, H, Ck, True),
        "row aggregation A_i V_i": (case.batch * H, W, C, W, False),
        "column aggregation A_j V_j": (case.batch * W, H, C, H, False),
    }


def operands(lines, rows, cols, depth, b_transposed, generator):
    a = torch.randn(lines, rows, depth, generator=generator)
    b_shape = (lines, cols, depth) if b_transposed else (lines, depth, cols)
    b = torch.randn(b_shape, generator=generator)
    return a, b, torch.empty(lines, rows, cols)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=cli_int(1, MAX_THREADS), default=torch.get_num_threads(),
                        help=f"torch threads, 1 to {MAX_THREADS}")  # fmt: skip
    benchmark.add_level_arguments(parser, 15, "timed repeats (median)", "levels to compile")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    cli_writable(parser, "--out", args.out)  # before anything is compiled or timed
    isas = benchmark.chosen_levels(parser, args.isa)
    torch.set_num_threads(args.threads)
    modules = {isa: build(isa) for isa in isas}
    blas = modules[isas[0]].has_blas()
    generator = torch.Generator().manual_seed(0)
    lines_out = [
        f"CPU: {measure.cpu_model()}; {args.threads} threads; torch {torch.__version__} "
        f"({torch.backends.mkl.is_available() and 'MKL' or 'BLAS'}); "
        f"{datetime.date.today().isoformat()}; median of {args.repeats}, timed in turn",
        "",
        "| case | product | lines x (rows x depth) (depth x cols) | "
        + " | ".join(f"tile {isa} GFLOP/s" for isa in isas)
        + " | sgemm GFLOP/s | best tile / sgemm |",
        "|---|---|---|" + "---|" * (len(isas) + 2),
    ]
    for case in benchmark.QUICK_CASES if args.quick else benchmark.DEFAULT_CASES:
        for name, (count, rows, cols, depth, b_t) in shapes(case).items():
            a, b, out = operands(count, rows, cols, depth, b_t, generator)
            expected = torch.bmm(a, b.transpose(1, 2) if b_t else b)
            operands_ = (out, a, b, b_t)
            steps = {
                f"tile {isa}": functools.partial(module.tile_lines, *operands_)
                for isa, module in modules.items()
            }
            if blas:
                steps["sgemm"] = functools.partial(modules[isas[0]].blas_lines, *operands_)
            for step in steps.values():  # each computes the product: check it first
                out.fill_(float("nan"))
                step()
                error = ((out - expected).abs().max() / expected.abs().max()).item()
                if not error < 1e-5:
                    raise AssertionError(f"{name}: relative error {error:.1e}")
            timings = measure.time_in_turn(steps, "cpu", repeats=args.repeats, warmup=2)
            gflop = 2 * count * rows * cols * depth / 1e9
            rate = {k: gflop / (t.median_ms * 1e-3) for k, t in timings.items()}
            best = max(rate[f"tile {isa}"] for isa in isas)
            versus = f"{rate['sgemm']:.0f} | {best / rate['sgemm']:.2f}x" if blas else "n/a | n/a"
            lines_out.append(
                f"| {case} | {name} | {count} x ({rows} x {depth}) ({depth} x {cols}) | "
                + " | ".join(f"{rate[f'tile {isa}']:.0f}" for isa in isas)
                + f" | {versus} |"
            )
    if not blas:
        lines_out += ["", "this torch build exports no sgemm_: the tile alone was timed"]
    size = 512 if args.quick else 2048
    matmul = benchmark.matmul_gflops(size=size, repeats=10)
    lines_out += ["", f"float32 matmul ({size}^3, torch.mm): {matmul:.0f} GFLOP/s"]
    text = "\n".join(lines_out)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
