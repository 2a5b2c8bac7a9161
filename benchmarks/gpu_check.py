"""The GPU check's Python side (``benchmarks/gpu_check.sh`` runs it): environment,
sanitizer workload and the timing table.

    python benchmarks/gpu_check.py env       --out DIR   GPU, driver, torch, nvcc: env.json
    python benchmarks/gpu_check.py sanitize              a small fused forward + backward per
                                                         dtype, for compute-sanitizer memcheck
    python benchmarks/gpu_check.py bench     --out DIR   the table: gpu_check.md, gpu_check.csv

``--dry-run`` runs the same code on the CPU at tiny sizes (no GPU needed): it checks
the script, not the numbers.

The timing (bench): fused CUDA (the tiled kernels; fused-nhwc: the same on inputs
already channels-last, which the kernels read in place), flex (FlexAttention compiled),
einsum (mmcv's formulation), reference (this library's readable PyTorch) and the
portable CUDA kernels (one thread per element, the operator before the tiled kernels)
at (1, 64, 512, 97x97), (8, 64, 512, 97x97) and (2, 64, 512, 128x256), float32 and
bfloat16, forward and forward + backward (the gradient of ``out``; the attention map
unused, as in training).  Each implementation is first checked against float64 on the
same inputs; then it is warmed up (compilation included) and timed with CUDA events,
median of up to 25 runs, its inputs rotated among three sets (the smallest problem's
inputs would otherwise stay in L2); its peak memory is the most allocated above the inputs.
Inputs are NCHW (as 1x1 convolutions give them).  The copy bandwidth and the matrix
rates are measured first: the table's floor is the larger of bytes / bandwidth and
operations / rate (:mod:`ccnet_edu.roofline`).  A time budget keeps the whole check
within its 4 minutes: what it leaves out is marked so in the table.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ccnet_edu import flex, measure, roofline  # noqa: E402
from ccnet_edu import functional as Fn  # noqa: E402
from ccnet_edu.ops import baselines  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Relative error of out against float64 (norm-wise) under which an implementation is timed.
TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
DRY_SHAPES = ((1, 8, 24, 9, 11), (2, 8, 24, 9, 11), (1, 8, 24, 8, 16))
IMPLS = ("fused", "fused-nhwc", "flex", "einsum", "reference", "portable")


# ------------------------------------------------------------------ environment


def _run(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment() -> dict:
    from ccnet_edu.ops import find_nvcc

    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "git_commit": _run(["git", "-C", str(ROOT), "rev-parse", "HEAD"]) or "unknown",
        "nvcc": (_run([find_nvcc() or "nvcc", "--version"]).splitlines() or ["none"])[-1],
        "gpu": "none",
    }
    smi = _run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    )
    if smi:
        info["nvidia_smi"] = smi
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            driver=smi.split(",")[1].strip() if smi.count(",") >= 1 else "unknown",
        )
    return info


# ------------------------------------------------------------------ implementations


def _fused(q, k, v):
    from ccnet_edu import ops

    return ops.criss_cross_attention(q, k, v)


class _Portable(torch.autograd.Function):
    """The portable kernels with their backward op (they have no registered autograd)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out, att = torch.ops.ccnet_edu.portable_criss_cross_attention(q, k, v)
        ctx.save_for_backward(q, k, v, att)
        return out, att

    @staticmethod
    def backward(ctx, grad_out, grad_att):
        q, k, v, att = ctx.saved_tensors
        return torch.ops.ccnet_edu.portable_criss_cross_attention_backward(
            grad_out, grad_att, att, q, k, v
        )


IMPL_FNS = {
    "fused": _fused,
    "fused-nhwc": _fused,  # the same, on inputs already channels-last (no layout copies)
    "flex": lambda q, k, v: flex.criss_cross_attention_flex(q, k, v),
    "einsum": baselines.einsum_criss_cross,
    "reference": Fn.criss_cross_attention_reference,
    "portable": _Portable.apply,
}


# ------------------------------------------------------------------ sanitizer workload


def sanitize(device: str) -> int:
    """Fused and portable forward + backward at a small odd size, every dtype."""
    from ccnet_edu import ops

    ops.load(cuda=device == "cuda")
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        q, k = (torch.randn(2, 16, 9, 70, generator=g).to(device, dtype) for _ in range(2))
        v, go = (torch.randn(2, 136, 9, 70, generator=g).to(device, dtype) for _ in range(2))
        ga = torch.randn(2, 9, 70, 78, generator=g).to(device, dtype)
        for name in ("criss_cross_attention", "portable_criss_cross_attention"):
            out, att = getattr(torch.ops.ccnet_edu, name)(q, k, v)
            grads = getattr(torch.ops.ccnet_edu, name + "_backward")(go, ga, att, q, k, v)
            finite = all(bool(t.isfinite().all()) for t in (out, att, *grads))
            print(f"{device} {dtype} {name}: {'finite' if finite else 'NOT FINITE'}")
            if not finite:
                return 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 0


# ------------------------------------------------------------------ timing


def _peak_mib(fn, device: torch.device) -> float:
    if device.type != "cuda":
        return float("nan")
    return measure.peak_memory_of(fn, device, "cuda").peak_bytes / 2**20


def ceilings(device: torch.device, dry: bool) -> dict:
    """Measured copy bandwidth (read + write) and matrix rates, as METHOD's two ceilings."""
    n = 2**20 if dry else 2**29  # 2 GiB of float32 in the non-dry run
    x = torch.randn(n, device=device)
    y = torch.empty_like(x)
    copy_ms = measure.time_ms(functools.partial(y.copy_, x), device, repeats=10, warmup=2).median_ms
    out = {"copy_TBps": 2 * x.numel() * 4 / (copy_ms * 1e-3) / 1e12}
    del x, y
    size = 256 if dry else 8192
    for name, dtype, tf32 in (
        ("bf16", torch.bfloat16, False),
        ("tf32", torch.float32, True),
        ("fp32", torch.float32, False),
    ):
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            ms = measure.time_ms(lambda a=a, b=b: a @ b, device, repeats=5, warmup=2).median_ms
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
        out[f"{name}_TFLOPs"] = 2 * size**3 / (ms * 1e-3) / 1e12
    return out


def _inputs(shape, dtype, device, generator, sets):
    batch, qk, channels, height, width = shape
    out = []
    for _ in range(sets):
        q, k = (torch.randn(batch, qk, height, width, generator=generator) for _ in range(2))
        v, go = (torch.randn(batch, channels, height, width, generator=generator) for _ in range(2))
        out.append([t.to(device, dtype) for t in (q, k, v, go)])
    return out


def _rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got = got.double()
    if not bool(got.isfinite().all()):
        return float("inf")
    return ((got - want).norm() / want.norm()).item()


def bench(device: torch.device, dry: bool, budget_s: float, out_dir: Path) -> list[dict]:
    from ccnet_edu import ops

    deadline = time.monotonic() + budget_s
    config = torch._dynamo.config  # room for every shape, dtype and half of flex
    setattr(
        config, "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit", 64
    )
    ops.load(cuda=device.type == "cuda")
    shapes = DRY_SHAPES if dry else roofline.SHAPES
    max_reps, max_s = (3, 0.5) if dry else (25, 1.5)
    generator = torch.Generator().manual_seed(0)
    measured = ceilings(device, dry)
    rows = []
    for shape in shapes:
        for dtype_name, dtype in DTYPES.items():
            sets = _inputs(shape, dtype, device, generator, 1 if dry else 3)
            q64, k64, v64, _ = (t.double() for t in sets[0])
            with torch.no_grad():
                want, _ = Fn.criss_cross_attention_reference(q64, k64, v64)
            del q64, k64, v64
            e = 4 if dtype == torch.float32 else 2
            rate = measured["bf16_TFLOPs"] if e == 2 else measured["tf32_TFLOPs"] / 3
            for impl in IMPLS:
                row = {"shape": "x".join(map(str, shape)), "dtype": dtype_name, "impl": impl}
                for mode in ("forward", "forward+backward"):
                    c = roofline.costs(shape, e, mode)
                    row[f"{mode} floor ms"] = 1e3 * max(
                        roofline.floor_seconds(c, measured["copy_TBps"] * 1e12, rate * 1e12)
                    )
                rows.append(row)
                if time.monotonic() > deadline:
                    row["status"] = "skipped: time budget"
                    continue
                impl_sets = sets
                if impl == "fused-nhwc":
                    impl_sets = [
                        [t.contiguous(memory_format=torch.channels_last) for t in s] for s in sets
                    ]
                try:
                    _time_impl(IMPL_FNS[impl], impl_sets, want, dtype, device, max_reps, max_s, row)
                except Exception as error:  # a failure is a row of the table, not the end
                    row["status"] = f"failed: {type(error).__name__}: {str(error)[:120]}"
                print(_row_line(row), flush=True)
            del sets, want
            if device.type == "cuda":
                torch.cuda.empty_cache()
    _write(rows, measured, out_dir)
    return rows


def _time_impl(fn, sets, want, dtype, device, max_reps, max_s, row) -> None:
    q, k, v, _ = sets[0]
    with torch.no_grad():
        out, _ = fn(q, k, v)
    row["rel error"] = _rel_error(out, want)
    del out
    if not row["rel error"] <= TOL[dtype]:
        row["status"] = "WRONG: not timed"
        return
    leaves = [[t.detach().requires_grad_() for t in s[:3]] + [s[3]] for s in sets]

    def forward(q, k, v, go):
        with torch.no_grad():
            fn(q, k, v)

    def forward_backward(q, k, v, go):
        out, _ = fn(q, k, v)
        torch.autograd.grad(out, (q, k, v), go)

    for mode, step, args in (
        ("forward", forward, sets),
        ("forward+backward", forward_backward, leaves),
    ):
        for warm in range(2):  # compiles flex, loads modules, fills the allocator
            step(*args[warm % len(args)])
        times, start = [], time.monotonic()
        for rep in range(max_reps):
            run = functools.partial(step, *args[rep % len(args)])  # the input sets in turn
            times.append(measure.time_once_ms(run, device))
            if time.monotonic() - start > max_s:
                break
        row[f"{mode} ms"] = statistics.median(times)
        row[f"{mode} runs"] = len(times)
        row[f"{mode} peak MiB"] = _peak_mib(functools.partial(step, *args[0]), device)
    row["status"] = "ok"


def _fmt(x, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _row_line(row: dict) -> str:
    return (
        f"{row['shape']:>16} {row['dtype']:>8} {row['impl']:>9}  "
        f"fwd {_fmt(row.get('forward ms'), '8.3f')} ms  "
        f"fwd+bwd {_fmt(row.get('forward+backward ms'), '8.3f')} ms  "
        f"err {_fmt(row.get('rel error'), '.1e')}  {row.get('status', '')}"
    )


def table(rows: list[dict], measured: dict) -> str:
    """Markdown: one line per (shape, dtype, impl); speed-ups against einsum."""
    einsum = {(r["shape"], r["dtype"]): r for r in rows if r["impl"] == "einsum"}
    lines = [
        "| B x C' x C x H x W | dtype | impl | fwd ms | fwd+bwd ms | einsum/impl fwd | "
        "einsum/impl f+b | fwd peak MiB | f+b peak MiB | floor fwd / f+b ms | rel. error | "
        "status |",
        "|" + "---|" * 12,
    ]
    for r in rows:
        e = einsum.get((r["shape"], r["dtype"]), {})
        ratio = {}
        for mode in ("forward", "forward+backward"):
            mine, theirs = r.get(f"{mode} ms"), e.get(f"{mode} ms")
            ratio[mode] = theirs / mine if mine and theirs else None
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {r['impl']} | {_fmt(r.get('forward ms'), '.3f')} | "
            f"{_fmt(r.get('forward+backward ms'), '.3f')} | {_fmt(ratio['forward'], '.2f')} | "
            f"{_fmt(ratio['forward+backward'], '.2f')} | "
            f"{_fmt(r.get('forward peak MiB'), '.1f')} | "
            f"{_fmt(r.get('forward+backward peak MiB'), '.1f')} | "
            f"{_fmt(r.get('forward floor ms'), '.3f')} / "
            f"{_fmt(r.get('forward+backward floor ms'), '.3f')} | "
            f"{_fmt(r.get('rel error'), '.1e')} | {r.get('status', '')} |"
        )
    lines.append("")
    lines.append(
        "measured ceilings: copy {copy_TBps:.2f} TB/s (read + write), matmul bf16 "
        "{bf16_TFLOPs:.0f}, tf32 {tf32_TFLOPs:.0f}, fp32 {fp32_TFLOPs:.1f} TFLOP/s; floor = "
        "max(bytes / copy, FLOPs / rate), rate bf16 for bfloat16, tf32 / 3 (3xTF32) for "
        "float32".format(**measured)
    )
    return "\n".join(lines)


def _write(rows: list[dict], measured: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = sorted(
        {k for r in rows for k in r}, key=lambda k: (k not in ("shape", "dtype", "impl"), k)
    )
    with open(out_dir / "gpu_check.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    env = environment()
    header = [
        "# Criss-cross attention on a GPU: `bash benchmarks/gpu_check.sh`",
        "",
        f"GPU {env.get('gpu')} (driver {env.get('driver', 'unknown')}, "
        f"{env.get('multiprocessors', '?')} SMs), torch {env['torch']} (CUDA "
        f"{env['torch_cuda']}), {env['nvcc']}, Python {env['python']}, commit "
        f"{env['git_commit'][:12]}, {env['date']}.",
        "",
        "",
    ]
    (out_dir / "gpu_check.md").write_text("\n".join(header) + table(rows, measured) + "\n")
    (out_dir / "ceilings.json").write_text(json.dumps(measured, indent=1) + "\n")


# ------------------------------------------------------------------ entry point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("env", "sanitize", "bench"))
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results")
    parser.add_argument("--budget", type=float, default=100.0, help="seconds for the timing")
    args = parser.parse_args(argv)
    if args.out is None:  # a dry run's CPU numbers never land among the GPU results
        args.out = (
            Path(tempfile.gettempdir()) / "ccnet_edu_gpu_check" / "dry_run"
            if args.dry_run
            else ROOT / "benchmarks" / "results"
        )
    device = torch.device("cpu" if args.dry_run else "cuda")
    if not args.dry_run and not torch.cuda.is_available():
        print("no GPU visible to torch (use --dry-run to check the script on the CPU)")
        return 2
    torch.manual_seed(0)
    if args.command == "env":
        info = environment()
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "env.json").write_text(json.dumps(info, indent=1) + "\n")
        print(json.dumps(info, indent=1))
        return 0
    if args.command == "sanitize":
        return sanitize(device.type)
    rows = bench(device, args.dry_run, args.budget, args.out)
    print((args.out / "gpu_check.md").read_text())
    return 0 if all(r.get("status") in ("ok", "skipped: time budget") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
