"""Every public entry point rejects bad input up front, with a message that names the argument.

One table of cases walks the public surface: every function and class in the
``__all__`` of every public module (and of the package itself).  A case is a
call with one bad argument -- wrong rank, wrong type, ``bool`` for an int,
``float`` for a size, zero, negative, NaN, out-of-range labels, mismatched
devices (CPU against ``meta``), empty tensors -- and the test asserts the
exception type (``TypeError`` for a wrong type, ``ValueError`` for a wrong
value) and that the message names the argument.  The command lines
(:data:`CLIS`: ``python -m ccnet_edu.train``, ``.analysis``, ``.ops``,
``.checkpoint`` and the benchmark scripts) are in the table too: a bad option
exits with code 2 and a one-line message naming it, before any work.

:func:`test_every_public_name_has_a_case` fails when a public name has no
case and no stated reason, so a new public name cannot skip this file;
:func:`test_every_cli_option_has_a_case` does the same for every option that
takes a value, of every command line (read off the parser each one builds), and
:func:`test_every_command_line_is_in_the_table` for every script or module that
runs as a command.

None of the ``ccnet_edu.ops`` cases builds the operator: each is refused
before the build is tried.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

import ccnet_edu  # noqa: E402
from ccnet_edu import (  # noqa: E402
    axial,
    cca,
    checkpoint,  # noqa: E402
    data,
    dense,
    emulation,
    export,
    functional,
    issa,
    layers,
    losses,
    measure,
    models,
    ops,
    roofline,
    sa,
    source,  # noqa: E402
    train,
    viz,
)
from ccnet_edu import nonlocal_block as nl  # noqa: E402
from ccnet_edu._checks import OneLineArgumentParser  # noqa: E402
from ccnet_edu.analysis import __main__ as analysis_cli  # noqa: E402
from ccnet_edu.analysis import (  # noqa: E402
    beacon_attention,
    compare,
    flops,
    memory,
    plots,
    propagation,
    stats,
)
from ccnet_edu.ops import __main__ as ops_cli  # noqa: E402
from ccnet_edu.ops import benchmark as ops_bench  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str, folder: str = "benchmarks") -> types.ModuleType:
    """``<folder>/<name>.py`` imported as a module (its ``main`` is its command line)."""
    spec = importlib.util.spec_from_file_location(f"{folder}.{name}", ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


line_products = _script("line_products")
cpu_isa = _script("cpu_isa")
cpu_phases = _script("cpu_phases")
build_pdf = _script("build_pdf", folder="tools")

# Every module whose ``__all__`` is public surface.
MODULES = [
    "ccnet_edu",
    "ccnet_edu.functional",
    "ccnet_edu.cca",
    "ccnet_edu.nonlocal_block",
    "ccnet_edu.issa",
    "ccnet_edu.sa",
    "ccnet_edu.axial",
    "ccnet_edu.losses",
    "ccnet_edu.dense",
    "ccnet_edu.layers",
    "ccnet_edu.measure",
    "ccnet_edu.analysis",
    "ccnet_edu.analysis.flops",
    "ccnet_edu.analysis.memory",
    "ccnet_edu.analysis.compare",
    "ccnet_edu.analysis.plots",
    "ccnet_edu.analysis.propagation",
    "ccnet_edu.viz",
    "ccnet_edu.viz.photos",
    "ccnet_edu.viz.maps",
    "ccnet_edu.viz.colours",
    "ccnet_edu.viz.figures",
    "ccnet_edu.viz.animation",
    "ccnet_edu.viz.interactive",
    "ccnet_edu.data",
    "ccnet_edu.models",
    "ccnet_edu.checkpoint",
    "ccnet_edu.train",
    "ccnet_edu.sync_batchnorm",
    "ccnet_edu.train_cli",
    "ccnet_edu.source",
    "ccnet_edu.ops",
    "ccnet_edu.ops.benchmark",
    "ccnet_edu.export",
    "ccnet_edu.emulation",
    "ccnet_edu.roofline",
]

# Public names that take no bad-input case, and why.
EXEMPT = {
    "ccnet_edu.sa.SANetOutput": "a result record (NamedTuple); SANetLoss checks it",
    "ccnet_edu.analysis.compare.Row": "a result record; format_table/paper_claims check rows",
    "ccnet_edu.analysis.compare.SweepPoint": "a result record; plot_scaling/write_csv check it",
    "ccnet_edu.analysis.memory.SavedTensor": "a result record of saved_tensors",
    "ccnet_edu.analysis.stats.BootstrapInterval": "a result record of image_bootstrap",
    "ccnet_edu.analysis.memory.SavedTensors": "a result record of saved_tensors",
    "ccnet_edu.measure.PeakMemory": "a result record of peak_memory_of",
    "ccnet_edu.measure.Timing": "a result record of time_ms and time_in_turn",
    "ccnet_edu.checkpoint.pretrained_names": "takes no arguments",
    "ccnet_edu.measure.cpu_model": "takes no arguments",
    "ccnet_edu.measure.load_average": "takes no arguments",
    "ccnet_edu.measure.LoadCheck": "a result record of check_load",
    "ccnet_edu.train_cli.build_parser": "takes no arguments",
    "ccnet_edu.analysis.flops.flop_formulas": "takes no arguments",
    "ccnet_edu.ops._build.BuildError": "an exception type; raised, not called with input",
    "ccnet_edu.ops._build.BuildInfo": "a result record of load",
    "ccnet_edu.ops._build.build_dir": "takes no arguments",
    "ccnet_edu.ops._build.csrc_dir": "takes no arguments",
    "ccnet_edu.ops._build.find_nvcc": "takes no arguments",
    "ccnet_edu.ops._build.select_isa": "takes no arguments",
    "ccnet_edu.ops._build.supported_isas": "takes no arguments",
    "ccnet_edu.ops.benchmark.Row": "a result record of run; format_table/write_csv check rows",
    "ccnet_edu.ops.benchmark.machine": "takes no arguments",
    "ccnet_edu.export.Check": "a result record of OnnxExport.compare",
    "ccnet_edu.export.OnnxExport": "a result record of to_onnx",
    "ccnet_edu.export.decompositions": "takes no arguments",
    "ccnet_edu.export.quiet_exporter": "takes no arguments",
    "ccnet_edu.emulation.library": "takes no arguments",
    "ccnet_edu.roofline.Ceiling": "a record of a datasheet's constants (CEILINGS)",
    "ccnet_edu.roofline.Costs": "a result record of costs; floor_seconds checks it",
    "ccnet_edu.roofline.DesignCosts": "a result record of design_costs",
}

# Every command line: its name and its ``main(argv)``.
CLIS = {
    "python -m ccnet_edu.train": train.main,
    "python -m ccnet_edu.analysis": analysis_cli.main,
    "python -m ccnet_edu.ops": ops_cli.main,
    "python -m ccnet_edu.checkpoint": checkpoint.main,
    "benchmarks/line_products.py": line_products.main,
    "benchmarks/cpu_isa.py": cpu_isa.main,
    "benchmarks/cpu_phases.py": cpu_phases.main,
    "tools/build_pdf.py": build_pdf.main,
}
# Files that run as commands but are not in CLIS, and why.
CLI_EXEMPT = {
    "ccnet_edu/train.py": "runs python -m ccnet_edu.train_cli's main (CLIS)",
    "benchmarks/bench_cca.py": "python -m ccnet_edu.ops bench under another name (same parser)",
    "benchmarks/gpu_check.py": "the GPU check's script (run on a GPU machine); not in CLIS yet",
    "tools/check_toc.py": "a build tool: its one optional argument is the repository root",
    "tools/check_terms.py": "a lint tool (make lint): its one optional argument is the repository "
    "root",
    "tools/check_outputs.py": "a lint tool (make lint): its arguments are the notebooks to check; "
    "an unreadable one is one line, exit 2 (tests/test_check_outputs.py)",
}


@dataclass
class Case:
    target: Callable  # the public name under test
    call: Callable[[], object]  # one bad call
    error: type[BaseException]  # TypeError, ValueError, or SystemExit for a command line
    names: str  # what the message must contain: the argument (or option)
    label: str = ""


def key(obj: object) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


# --------------------------------------------------------------------------- inputs


def fmap(*shape: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.Tensor:
    return (
        torch.randn(*shape, dtype=dtype, device=device)
        if device != "meta"
        else torch.empty(*shape, dtype=dtype, device="meta")
    )


def cross(b: int = 1, h: int = 3, w: int = 4) -> torch.Tensor:
    return torch.rand(b, h, w, h + w - 1)


def seg_out(b: int = 2, k: int = 4, h: int = 8, w: int = 8) -> sa.SANetOutput:
    return sa.SANetOutput(torch.randn(b, k, h, w), torch.randn(b, k, h, w), torch.randn(b, k))


def small_model() -> models.SegmentationModel:
    torch.manual_seed(0)
    return models.SegmentationModel("fcn", width=2, mid_channels=2)


def photo() -> torch.Tensor:
    return torch.rand(3, 24, 36)


def maps(h: int = 4, w: int = 6) -> dict:
    n = h * w
    return {"CCA": {"loop 1": torch.full((n, n), 1.0 / n)}}


def row(model: str = "non-local") -> compare.Row:
    return compare.Row(model, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1)


def point(model: str = "rcca", size: int = 8) -> compare.SweepPoint:
    return compare.SweepPoint(model, size, size * size, 1.0, 1.0, 1.0, 1.0)


def eval_cca() -> cca.CrissCrossAttention:
    torch.manual_seed(0)
    return cca.CrissCrossAttention(8).eval()


def bench_row() -> ops_bench.Row:
    return ops_bench.Row("B=1 C'=8 C=8 8x8", "fused", "forward", 1.0, 1.0, 1.0, 0.0)


QUICK = [ops_bench.Case(1, 2, 2, 3, 3)]


def blocked_path(tmp: Path) -> Path:
    """A path whose parent is a file: unwritable whoever runs the tests."""
    tmp.mkdir(parents=True, exist_ok=True)
    blocker = tmp / "a_file"
    blocker.write_text("")
    return blocker / "out"


_TMP = Path()  # each test's tmp_path, set by the _tmp_dir fixture

NAN = float("nan")
Q, K, V = (lambda: fmap(1, 2, 3, 4)), (lambda: fmap(1, 2, 3, 4)), (lambda: fmap(1, 5, 3, 4))

# --------------------------------------------------------------------------- the table

CASES = [
    Case(source.source_lines, lambda: source.source_lines(42, "x"), TypeError, "obj must be"),
    Case(
        source.source_lines,
        lambda: source.source_lines(source.show_source, "no such line"),
        ValueError,
        "first",
    ),
    Case(
        source.source_lines, lambda: source.source_lines(source.show_source, 3), TypeError, "first"
    ),
    Case(
        source.paper_beside_code_markdown,
        lambda: source.paper_beside_code_markdown(("paper", ("where", 3))),
        TypeError,
        "rows[0]",
        "an excerpt that is not text",
    ),
    Case(source.paper_beside_code, lambda: source.paper_beside_code(), ValueError, "rows"),
    Case(source.source_markdown, lambda: source.source_markdown(42), TypeError, "obj must be"),
    Case(
        source.source_markdown,
        lambda: source.source_markdown(source.show_source, "x"),
        ValueError,
        "start and stop",
    ),
    Case(
        source.source_markdown,
        lambda: source.source_markdown(source.show_source, 1, 2),
        TypeError,
        "start must be a str",
    ),
    Case(
        source.source_markdown,
        lambda: source.source_markdown(source.show_source, "nope", ")"),
        ValueError,
        "start: no line",
    ),
    Case(source.show_source, lambda: source.show_source(42), TypeError, "obj must be"),
    Case(source.source_lines, lambda: source.source_lines(42, "x"), TypeError, "obj must be"),
    Case(source.csrc_lines, lambda: source.csrc_lines(1, "a", "b"), TypeError, "path"),
    Case(
        source.csrc_lines,
        lambda: source.csrc_lines("../README.md", "a", "b"),
        ValueError,
        "path must name a file in csrc/",
    ),
    Case(
        source.csrc_lines,
        lambda: source.csrc_lines("cca_simd.h", "no such line", "x"),
        ValueError,
        "start: no line",
    ),
    Case(
        source.csrc_definitions,
        lambda: source.csrc_definitions("cca_common.h"),
        ValueError,
        "names",
    ),
    Case(
        source.csrc_definitions,
        lambda: source.csrc_definitions("cca_common.h", "no_such_function"),
        ValueError,
        "names: no definition",
    ),
    Case(
        source.csrc_definitions,
        lambda: source.csrc_definitions("cca_common.h", 3),
        TypeError,
        "names[0]",
    ),
    Case(
        source.csrc_opening_comment,
        lambda: source.csrc_opening_comment("missing.h"),
        ValueError,
        "path must name a file in csrc/",
    ),
    Case(source.show_csrc, lambda: source.show_csrc("cca_simd.h", None), TypeError, "text"),
    Case(
        source.source_lines,
        lambda: source.source_lines(source.show_source, 1),
        TypeError,
        "first must be a str",
    ),
    Case(
        source.source_lines,
        lambda: source.source_lines(source.show_source, "nope"),
        ValueError,
        "first: no line",
    ),
    Case(
        source.source_lines,
        lambda: source.source_lines(source.show_source, "def show_source", "nope"),
        ValueError,
        "last: no line",
    ),
    Case(
        source.paper_beside_code_markdown,
        lambda: source.paper_beside_code_markdown(),
        ValueError,
        "rows",
    ),
    Case(
        source.paper_beside_code_markdown,
        lambda: source.paper_beside_code_markdown(("paper", "code")),
        TypeError,
        "rows[0]",
    ),
    Case(
        source.paper_beside_code,
        lambda: source.paper_beside_code(("paper", ("where", 3))),
        TypeError,
        "rows[0]",
    ),
    # functional
    Case(
        functional.criss_cross_attention,
        lambda: functional.criss_cross_attention(fmap(2, 3, 4), K(), V()),
        ValueError,
        "query",
        "rank",
    ),
    Case(
        functional.criss_cross_attention,
        lambda: functional.criss_cross_attention(Q(), K(), V().to("meta")),
        ValueError,
        "value on meta",
        "devices",
    ),
    Case(
        functional.criss_cross_attention,
        lambda: functional.criss_cross_attention(Q(), K(), V(), impl="cuda"),
        ValueError,
        "impl",
    ),
    Case(
        functional.criss_cross_attention,
        lambda: functional.criss_cross_attention(Q(), K(), V(), return_attention=1),
        TypeError,
        "return_attention",
        "int for bool",
    ),
    Case(
        functional.criss_cross_attention,
        lambda: functional.criss_cross_attention(
            fmap(0, 2, 3, 4), fmap(0, 2, 3, 4), fmap(0, 5, 3, 4)
        ),
        ValueError,
        "query",
        "empty",
    ),
    Case(
        functional.criss_cross_attention_reference,
        lambda: functional.criss_cross_attention_reference(Q(), K(), V().long()),
        TypeError,
        "value",
        "integer dtype",
    ),
    Case(
        functional.criss_cross_attention_reference,
        lambda: functional.criss_cross_attention_reference(Q(), fmap(1, 2, 4, 3), V()),
        ValueError,
        "key",
    ),
    Case(functional.column_index, lambda: functional.column_index(0), ValueError, "height"),
    Case(functional.column_index, lambda: functional.column_index(3.0), TypeError, "height"),
    Case(
        functional.column_index, lambda: functional.column_index(3, device=0), TypeError, "device"
    ),
    Case(
        functional.attention_to_channels_first,
        lambda: functional.attention_to_channels_first(torch.rand(3, 4, 6)),
        ValueError,
        "attention",
    ),
    Case(
        functional.attention_to_channels_first,
        lambda: functional.attention_to_channels_first(torch.rand(1, 3, 4, 5)),
        ValueError,
        "attention",
        "not H+W-1",
    ),
    Case(
        functional.attention_from_channels_first,
        lambda: functional.attention_from_channels_first(torch.rand(1, 5, 3, 4)),
        ValueError,
        "attention",
    ),
    Case(
        functional.attention_to_padded,
        lambda: functional.attention_to_padded([[0.5]]),
        TypeError,
        "attention",
    ),
    Case(
        functional.attention_from_padded,
        lambda: functional.attention_from_padded(torch.rand(1, 3, 4, 6)),
        ValueError,
        "attention",
    ),
    # cca
    Case(
        cca.CrissCrossAttention,
        lambda: cca.CrissCrossAttention(True),
        TypeError,
        "in_channels",
        "bool for int",
    ),
    Case(
        cca.CrissCrossAttention,
        lambda: cca.CrissCrossAttention(8.0),
        TypeError,
        "in_channels",
        "float for int",
    ),
    Case(
        cca.CrissCrossAttention,
        lambda: cca.CrissCrossAttention(8, qk_channels=0),
        ValueError,
        "qk_channels",
    ),
    Case(
        cca.CrissCrossAttention,
        lambda: cca.CrissCrossAttention(10**9),
        ValueError,
        "in_channels",
        "huge: refused before its weights are allocated",
    ),
    Case(
        cca.CrissCrossAttention,
        lambda: cca.CrissCrossAttention(8, qk_channels=10**9),
        ValueError,
        "qk_channels",
        "huge: refused before its weights are allocated",
    ),
    Case(
        cca.RCCAHead,
        lambda: cca.RCCAHead(8, num_classes=10**9),
        ValueError,
        "num_classes",
        "huge: refused before its weights are allocated",
    ),
    Case(
        nl.NonLocal2d,
        lambda: nl.NonLocal2d(10**9),
        ValueError,
        "in_channels",
        "huge: refused before its weights are allocated",
    ),
    Case(
        issa.InterlacedSparseSelfAttention,
        lambda: issa.InterlacedSparseSelfAttention(10**9),
        ValueError,
        "in_channels",
        "huge: refused before its weights are allocated",
    ),
    Case(
        sa.SqueezeAttention,
        lambda: sa.SqueezeAttention(8, out_channels=10**9),
        ValueError,
        "out_channels",
        "huge: refused before its weights are allocated",
    ),
    Case(
        axial.AxialAttention,
        lambda: axial.AxialAttention(10**9),
        ValueError,
        "in_channels",
        "huge: refused before its weights are allocated",
    ),
    Case(
        dense.criss_cross_mask,
        lambda: dense.criss_cross_mask(10**5, 10**5),
        ValueError,
        "mask of height 100000",
        "huge: refused before its weights are allocated",
    ),
    Case(
        cca.CrissCrossAttention,
        lambda: cca.CrissCrossAttention(8)(fmap(1, 4, 3, 3)),
        ValueError,
        "in_channels=8",
    ),
    Case(
        cca.CrissCrossAttention,
        lambda: cca.CrissCrossAttention(8)(fmap(1, 8, 3, 3, device="meta")),
        ValueError,
        "x on meta",
        "devices",
    ),
    Case(
        cca.CrissCrossAttention,
        lambda: cca.CrissCrossAttention(8)(fmap(0, 8, 3, 3)),
        ValueError,
        "x",
        "empty batch",
    ),
    Case(
        cca.RecurrentCrissCrossAttention,
        lambda: cca.RecurrentCrissCrossAttention(8, 0),
        ValueError,
        "recurrence",
    ),
    Case(
        cca.RecurrentCrissCrossAttention,
        lambda: cca.RecurrentCrissCrossAttention(8, 2.0),
        TypeError,
        "recurrence",
    ),
    Case(
        cca.RecurrentCrissCrossAttention,
        lambda: cca.RecurrentCrissCrossAttention(8)(fmap(8, 3, 3)),
        ValueError,
        "x",
    ),
    Case(cca.RCCAHead, lambda: cca.RCCAHead(16, 0), ValueError, "num_classes"),
    Case(cca.RCCAHead, lambda: cca.RCCAHead(16, 3, dropout=NAN), ValueError, "dropout", "NaN"),
    Case(cca.RCCAHead, lambda: cca.RCCAHead(16, 3, activation="gelu"), ValueError, "activation"),
    Case(cca.RCCAHead, lambda: cca.RCCAHead(16, 3, recurrence=-1), ValueError, "recurrence"),
    Case(cca.FCNHead, lambda: cca.FCNHead(16, 3, mid_channels=0), ValueError, "mid_channels"),
    Case(cca.FCNHead, lambda: cca.FCNHead(16, 3, norm="layer"), ValueError, "norm"),
    # nonlocal_block
    Case(nl.NonLocal2d, lambda: nl.NonLocal2d(8, mode="dense"), ValueError, "mode"),
    Case(nl.NonLocal2d, lambda: nl.NonLocal2d(-8), ValueError, "in_channels"),
    Case(nl.NonLocal2d, lambda: nl.NonLocal2d(8)(fmap(1, 8, 2, 2).long()), TypeError, "x"),
    # sa
    Case(
        sa.SqueezeExcitation, lambda: sa.SqueezeExcitation(8, reduction=0), ValueError, "reduction"
    ),
    Case(
        sa.SqueezeExcitation,
        lambda: sa.SqueezeExcitation(8)(fmap(1, 4, 3, 3)),
        ValueError,
        "channels",
    ),
    Case(sa.SqueezeAttention, lambda: sa.SqueezeAttention(8, pool=(2, True)), TypeError, "pool"),
    Case(sa.SqueezeAttention, lambda: sa.SqueezeAttention(8, gate="tanh"), ValueError, "gate"),
    Case(
        sa.SqueezeAttention,
        lambda: sa.SqueezeAttention(8, out_channels=2.0),
        TypeError,
        "out_channels",
    ),
    Case(sa.SANetHead, lambda: sa.SANetHead([4, 4, 4], 3), ValueError, "in_channels_list"),
    Case(sa.SANetHead, lambda: sa.SANetHead([4, 4, 4, 0], 3), ValueError, "in_channels_list[3]"),
    Case(sa.SANetHead, lambda: sa.SANetHead([4] * 4, 3, dropout=1.5), ValueError, "dropout"),
    Case(
        sa.SANetHead,
        lambda: sa.SANetHead([4] * 4, 3)(
            [fmap(1, 4, 8, 8)] * 3 + [fmap(1, 4, 4, 4, device="meta")]
        ),
        ValueError,
        "features[3]",
        "devices",
    ),
    Case(sa.SANetHead, lambda: sa.SANetHead([4] * 4, 3)(fmap(1, 4, 8, 8)), TypeError, "features"),
    Case(sa.SANetLoss, lambda: sa.SANetLoss(alpha=-0.2), ValueError, "alpha"),
    Case(sa.SANetLoss, lambda: sa.SANetLoss(beta=NAN), ValueError, "beta"),
    Case(
        sa.SANetLoss,
        lambda: sa.SANetLoss()(seg_out(), torch.full((2, 8, 8), 9)),
        ValueError,
        "target",
        "labels out of range",
    ),
    Case(
        sa.SANetLoss,
        lambda: sa.SANetLoss()(seg_out().mask, torch.zeros(2, 8, 8).long()),
        TypeError,
        "output",
    ),
    Case(
        sa.SANetLoss,
        lambda: sa.SANetLoss()(seg_out(), torch.zeros(2, 8, 8, dtype=torch.long, device="meta")),
        ValueError,
        "target on meta",
        "devices",
    ),
    # losses
    Case(
        losses.phi_var,
        lambda: losses.phi_var(torch.ones(3), delta_v=1.0, delta_d=0.5),
        ValueError,
        "delta_v",
    ),
    Case(losses.phi_var, lambda: losses.phi_var([1.0]), TypeError, "distance"),
    Case(
        losses.category_consistent_terms,
        lambda: losses.category_consistent_terms(
            fmap(1, 4, 3, 3), torch.full((1, 3, 3), 200_000), 4
        ),
        ValueError,
        "num_classes=4",
        "one stray label",
    ),
    Case(
        losses.category_consistent_terms,
        lambda: losses.category_consistent_terms(
            fmap(1, 4, 3, 3), torch.zeros(1, 3, 3).long(), 4.0
        ),
        TypeError,
        "num_classes",
    ),
    Case(
        losses.category_consistent_terms,
        lambda: losses.category_consistent_terms(
            fmap(1, 4, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long, device="meta"), 4
        ),
        ValueError,
        "labels on meta",
        "devices",
    ),
    Case(
        losses.CategoryConsistentLoss,
        lambda: losses.CategoryConsistentLoss(0),
        ValueError,
        "num_classes",
    ),
    Case(
        losses.CategoryConsistentLoss,
        lambda: losses.CategoryConsistentLoss(True),
        TypeError,
        "num_classes",
    ),
    Case(
        losses.CategoryConsistentLoss,
        lambda: losses.CategoryConsistentLoss(4, alpha=NAN),
        ValueError,
        "alpha",
    ),
    Case(
        losses.CategoryConsistentLoss,
        lambda: losses.CategoryConsistentLoss(4, ignore_index=0),
        ValueError,
        "ignore_index",
    ),
    Case(
        losses.CategoryConsistentLoss,
        lambda: losses.CategoryConsistentLoss(4)(fmap(1, 4, 3, 3), torch.full((1, 3, 3), -1)),
        ValueError,
        "labels",
        "negative labels",
    ),
    Case(
        losses.CategoryConsistentLoss,
        lambda: losses.CategoryConsistentLoss(4)(fmap(1, 4, 3, 3), torch.zeros(1, 3, 3)),
        TypeError,
        "labels",
    ),
    # dense
    Case(
        dense.dense_attention,
        lambda: dense.dense_attention(Q(), K(), V(), mask=torch.ones(12, 12)),
        TypeError,
        "mask",
    ),
    Case(
        dense.dense_attention,
        lambda: dense.dense_attention(
            Q(), K(), V(), mask=torch.ones(12, 12, dtype=torch.bool, device="meta")
        ),
        ValueError,
        "mask on meta",
        "devices",
    ),
    Case(
        dense.dense_attention,
        lambda: dense.dense_attention(Q(), K(), V(), mask=torch.ones(11, 11, dtype=torch.bool)),
        ValueError,
        "mask",
    ),
    Case(dense.criss_cross_mask, lambda: dense.criss_cross_mask(True, 3), TypeError, "height"),
    Case(dense.criss_cross_mask, lambda: dense.criss_cross_mask(3, 0), ValueError, "width"),
    Case(dense.criss_cross_index, lambda: dense.criss_cross_index(3, 2.5), TypeError, "width"),
    Case(
        dense.criss_cross_attention_to_dense,
        lambda: dense.criss_cross_attention_to_dense(torch.rand(3, 4, 6)),
        ValueError,
        "attention",
    ),
    Case(
        dense.dense_to_criss_cross_attention,
        lambda: dense.dense_to_criss_cross_attention(torch.rand(1, 12, 12), 3, -4),
        ValueError,
        "width",
    ),
    Case(
        dense.dense_to_criss_cross_attention,
        lambda: dense.dense_to_criss_cross_attention(torch.rand(1, 10, 10), 3, 4),
        ValueError,
        "dense attention",
    ),
    Case(
        dense.recurrent_attention_to_dense,
        lambda: dense.recurrent_attention_to_dense([]),
        ValueError,
        "attentions",
    ),
    Case(
        dense.recurrent_attention_to_dense,
        lambda: dense.recurrent_attention_to_dense([cross(), cross(h=4, w=3)]),
        ValueError,
        "attentions[1]",
    ),
    Case(
        dense.recurrent_attention_to_dense,
        lambda: dense.recurrent_attention_to_dense(cross()),
        TypeError,
        "attentions",
    ),
    Case(
        dense.issa_attention_to_dense,
        lambda: dense.issa_attention_to_dense(
            (torch.rand(1, 4, 4, 4), torch.rand(1, 4, 4, 4)), 4, 4, 2, step="both"
        ),
        ValueError,
        "step",
    ),
    Case(
        dense.issa_attention_to_dense,
        lambda: dense.issa_attention_to_dense(([1.0], torch.rand(1, 4, 4, 4)), 4, 4, 2),
        TypeError,
        "long_attention",
    ),
    Case(dense.interlaced_masks, lambda: dense.interlaced_masks(4, 4, 0), ValueError, "block_size"),
    Case(
        dense.attention_to_dense,
        lambda: dense.attention_to_dense(cross(), kind="sparse"),
        ValueError,
        "kind",
    ),
    Case(
        dense.attention_to_dense,
        lambda: dense.attention_to_dense(torch.rand(1, 12, 11), kind="dense"),
        ValueError,
        "attention",
    ),
    Case(
        dense.attention_to_dense,
        lambda: dense.attention_to_dense((torch.rand(1, 4, 4, 4),) * 2, kind="issa"),
        ValueError,
        "height",
    ),
    Case(
        dense.query_map,
        lambda: dense.query_map(torch.rand(1, 12, 12), 3, 0, 3, 4),
        ValueError,
        "i must be",
    ),
    Case(
        dense.query_map,
        lambda: dense.query_map(torch.rand(1, 12, 12), True, 0, 3, 4),
        TypeError,
        "i must be",
    ),
    Case(
        dense.attention_query_map,
        lambda: dense.attention_query_map(cross(), 0, 1.0),
        TypeError,
        "j must be",
    ),
    Case(
        dense.attention_query_map,
        lambda: dense.attention_query_map(torch.rand(1, 12, 12), 0, 0, kind="dense"),
        ValueError,
        "height and width",
    ),
    # issa
    Case(issa.blocks_padding, lambda: issa.blocks_padding(5, 7, (0, 4)), ValueError, "block_size"),
    Case(issa.blocks_padding, lambda: issa.blocks_padding(-5, 7, 4), ValueError, "height"),
    Case(
        issa.blocks_padding,
        lambda: issa.blocks_padding(5, True, 4),
        TypeError,
        "width",
        "bool for int",
    ),
    Case(
        issa.pad_to_blocks,
        lambda: issa.pad_to_blocks(fmap(1, 2, 5, 5), (2, 2.0)),
        TypeError,
        "block_size",
    ),
    Case(issa.pad_to_blocks, lambda: issa.pad_to_blocks(fmap(2, 5, 5), 2), ValueError, "x", "rank"),
    Case(issa.unpad, lambda: issa.unpad(fmap(1, 2, 6, 6), (1, 1, 0)), ValueError, "padding"),
    Case(issa.unpad, lambda: issa.unpad(fmap(1, 2, 6, 6), (1, 1, 0, -1)), ValueError, "padding[3]"),
    Case(issa.unpad, lambda: issa.unpad(fmap(1, 2, 6, 6), (1, 1.0, 0, 0)), TypeError, "padding[1]"),
    Case(issa.unpad, lambda: issa.unpad(fmap(1, 2, 6, 6), (3, 3, 0, 0)), ValueError, "padding"),
    Case(issa.unpad, lambda: issa.unpad([[1.0]], (0, 0, 0, 0)), TypeError, "x"),
    Case(
        issa.long_range_permute,
        lambda: issa.long_range_permute(fmap(1, 1, 5, 4), 2),
        ValueError,
        "x must be padded",
    ),
    Case(
        issa.long_range_unpermute,
        lambda: issa.long_range_unpermute(fmap(4, 1, 2, 2), 1, 4, 4, 0),
        ValueError,
        "block_size",
    ),
    Case(
        issa.long_range_unpermute,
        lambda: issa.long_range_unpermute(fmap(4, 1, 2, 2), 2, 4, 4, 2),
        ValueError,
        "groups must have shape (8, C, 2, 2)",
    ),
    Case(
        issa.long_range_unpermute,
        lambda: issa.long_range_unpermute(fmap(4, 1, 2, 2), 1.0, 4, 4, 2),
        TypeError,
        "batch",
    ),
    Case(
        issa.long_range_unpermute,
        lambda: issa.long_range_unpermute(fmap(4, 1, 2, 2), 1, 5, 4, 2),
        ValueError,
        "multiples of block_size",
    ),
    Case(
        issa.short_range_permute,
        lambda: issa.short_range_permute(fmap(1, 1, 4, 4), -2),
        ValueError,
        "block_size",
    ),
    Case(
        issa.short_range_unpermute,
        lambda: issa.short_range_unpermute(fmap(4, 1, 2, 2), 1, 4, 4, (2, 0)),
        ValueError,
        "block_size",
    ),
    Case(
        issa.short_range_unpermute,
        lambda: issa.short_range_unpermute(fmap(4, 1, 2), 1, 4, 4, 2),
        ValueError,
        "groups",
        "rank",
    ),
    Case(issa.long_range_groups, lambda: issa.long_range_groups(0, 4, 2), ValueError, "height"),
    Case(issa.pixel_groups, lambda: issa.pixel_groups(4, 0, 2), ValueError, "width"),
    Case(issa.pixel_groups, lambda: issa.pixel_groups(4, 4, (2, 0)), ValueError, "block_size"),
    Case(
        dense.same_values,
        lambda: dense.same_values(torch.ones(2), torch.ones(2, dtype=torch.long)),
        TypeError,
        "b",
    ),
    Case(
        dense.same_values,
        lambda: dense.same_values(torch.ones(2), torch.ones(2), atol=-1.0),
        ValueError,
        "atol",
    ),
    Case(
        issa.short_range_groups,
        lambda: issa.short_range_groups(4, 2.5, 2),
        TypeError,
        "width",
        "float for int",
    ),
    Case(
        issa.interlaced_masks, lambda: issa.interlaced_masks(4, 4, (4, 0)), ValueError, "block_size"
    ),
    Case(
        issa.group_attention,
        lambda: issa.group_attention(fmap(4, 2, 3), fmap(4, 2, 3, 3), fmap(4, 5, 3, 3), 0.5),
        ValueError,
        "query",
    ),
    Case(
        issa.group_attention,
        lambda: issa.group_attention(fmap(4, 2, 3, 3), fmap(4, 2, 3, 2), fmap(4, 5, 3, 3), 0.5),
        ValueError,
        "query and key",
    ),
    Case(
        issa.group_attention,
        lambda: issa.group_attention(fmap(4, 2, 3, 3), fmap(4, 2, 3, 3), fmap(2, 5, 3, 3), 0.5),
        ValueError,
        "value",
    ),
    Case(
        issa.group_attention,
        lambda: issa.group_attention(
            fmap(4, 2, 3, 3), fmap(4, 2, 3, 3), fmap(4, 5, 3, 3, device="meta"), 0.5
        ),
        ValueError,
        "value on meta",
        "devices",
    ),
    Case(
        issa.group_attention,
        lambda: issa.group_attention(
            fmap(4, 2, 3, 3), fmap(4, 2, 3, 3).long(), fmap(4, 5, 3, 3), 0.5
        ),
        TypeError,
        "key",
    ),
    Case(
        issa.group_attention,
        lambda: issa.group_attention(fmap(4, 2, 3, 3), fmap(4, 2, 3, 3), fmap(4, 5, 3, 3), NAN),
        ValueError,
        "scale",
        "NaN",
    ),
    Case(
        issa.interlaced_sparse_attention,
        lambda: issa.interlaced_sparse_attention(fmap(3, 4, 4)),
        ValueError,
        "x",
    ),
    Case(
        issa.interlaced_sparse_attention,
        lambda: issa.interlaced_sparse_attention(fmap(1, 3, 4, 4), 2, return_attention=1),
        TypeError,
        "return_attention",
    ),
    Case(
        issa.interlaced_attention_to_dense,
        lambda: issa.interlaced_attention_to_dense(
            torch.ones(1, 2, 2, 2), torch.ones(1, 4, 4, 4), 4, 4, 2
        ),
        ValueError,
        "long_attention",
    ),
    Case(
        issa.interlaced_attention_to_dense,
        lambda: issa.interlaced_attention_to_dense(torch.ones(1, 4, 4, 4), [[1.0]], 4, 4, 2),
        TypeError,
        "short_attention",
    ),
    Case(
        issa.SelfAttentionBlock,
        lambda: issa.SelfAttentionBlock(0, 4, 4, 4),
        ValueError,
        "in_channels",
    ),
    Case(
        issa.SelfAttentionBlock,
        lambda: issa.SelfAttentionBlock(8, True, 8, 8),
        TypeError,
        "key_channels",
        "bool for int",
    ),
    Case(
        issa.SelfAttentionBlock,
        lambda: issa.SelfAttentionBlock(8, 4, 8.0, 8),
        TypeError,
        "value_channels",
    ),
    Case(
        issa.SelfAttentionBlock,
        lambda: issa.SelfAttentionBlock(8, 8, 8, 4, projections=False),
        ValueError,
        "out_channels",
    ),
    Case(
        issa.SelfAttentionBlock,
        lambda: issa.SelfAttentionBlock(8, 8, 8, 8, projections=1),
        TypeError,
        "projections",
    ),
    Case(
        issa.SelfAttentionBlock,
        lambda: issa.SelfAttentionBlock(8, 4, 8, 8)(fmap(4, 6, 2, 2)),
        ValueError,
        "in_channels=8",
    ),
    Case(
        issa.InterlacedSparseSelfAttention,
        lambda: issa.InterlacedSparseSelfAttention(0),
        ValueError,
        "in_channels",
    ),
    Case(
        issa.InterlacedSparseSelfAttention,
        lambda: issa.InterlacedSparseSelfAttention(True),
        TypeError,
        "in_channels",
        "bool for int",
    ),
    Case(
        issa.InterlacedSparseSelfAttention,
        lambda: issa.InterlacedSparseSelfAttention(4, block_size=0),
        ValueError,
        "block_size",
    ),
    Case(
        issa.InterlacedSparseSelfAttention,
        lambda: issa.InterlacedSparseSelfAttention(4, key_channels=0),
        ValueError,
        "key_channels",
        "zero is not the default",
    ),
    Case(
        issa.InterlacedSparseSelfAttention,
        lambda: issa.InterlacedSparseSelfAttention(4, out_channels=2.0),
        TypeError,
        "out_channels",
    ),
    Case(
        issa.InterlacedSparseSelfAttention,
        lambda: issa.InterlacedSparseSelfAttention(4, projections="no"),
        TypeError,
        "projections",
    ),
    Case(
        issa.InterlacedSparseSelfAttention,
        lambda: issa.InterlacedSparseSelfAttention(4, 2)(fmap(1, 4, 4, 4), return_attention=1),
        TypeError,
        "return_attention",
    ),
    Case(issa.ISAHead, lambda: issa.ISAHead(8, 0), ValueError, "num_classes"),
    Case(issa.ISAHead, lambda: issa.ISAHead(True, 3), TypeError, "in_channels"),
    Case(issa.ISAHead, lambda: issa.ISAHead(8, 3, channels=0), ValueError, "channels"),
    Case(issa.ISAHead, lambda: issa.ISAHead(8, 3, block_size=(2, 0)), ValueError, "block_size"),
    Case(issa.ISAHead, lambda: issa.ISAHead(8, 3, dropout=NAN), ValueError, "dropout"),
    Case(issa.ISAHead, lambda: issa.ISAHead(8, 3, dropout=1.5), ValueError, "dropout"),
    Case(
        issa.ISAHead,
        lambda: issa.ISAHead(8, 3, block_size=2)(fmap(1, 4, 4, 4)),
        ValueError,
        "in_channels=8",
    ),
    # analysis.flops
    Case(
        flops.AttentionFlopCounter, lambda: flops.AttentionFlopCounter(depth=0), ValueError, "depth"
    ),
    Case(
        flops.einsum_flops,
        lambda: flops.einsum_flops("ij,jk->ik", (2, 3), (3,)),
        ValueError,
        "shapes[1]",
    ),
    Case(
        flops.einsum_flops,
        lambda: flops.einsum_flops(b"ij,jk", (2, 3), (3, 4)),
        TypeError,
        "equation",
    ),
    Case(flops.count_flops, lambda: flops.count_flops(torch.nn.Identity()), ValueError, "inputs"),
    Case(flops.count_flops, lambda: flops.count_flops("relu", torch.ones(1)), TypeError, "fn"),
    Case(
        flops.count_flops,
        lambda: flops.count_flops(torch.nn.Identity(), torch.ones(1), backward=1),
        TypeError,
        "backward",
    ),
    Case(
        flops.flops_by_module, lambda: flops.flops_by_module(None, torch.ones(1)), TypeError, "fn"
    ),
    Case(
        flops.flops_by_kind, lambda: flops.flops_by_kind(torch.nn.Identity()), ValueError, "inputs"
    ),
    Case(flops.cca_flops, lambda: flops.cca_flops(97, 97.0, 512, 64), TypeError, "width"),
    Case(flops.cca_flops, lambda: flops.cca_flops(97, 97, 512, 0), ValueError, "qk_channels"),
    Case(
        flops.rcca_flops,
        lambda: flops.rcca_flops(97, 97, 512, 64, recurrence=True),
        TypeError,
        "recurrence",
    ),
    Case(
        flops.nonlocal_flops,
        lambda: flops.nonlocal_flops(97, 97, 512, 64, batch=0),
        ValueError,
        "batch",
    ),
    Case(
        flops.issa_flops,
        lambda: flops.issa_flops(97, 97, 512, block_size=(8, 0)),
        ValueError,
        "block_size",
    ),
    Case(
        flops.issa_flops,
        lambda: flops.issa_flops(97, 97, 512, key_channels=-1),
        ValueError,
        "key_channels",
    ),
    Case(
        flops.duplicate_centre_flops,
        lambda: flops.duplicate_centre_flops(-1, 3, 2, 2),
        ValueError,
        "height",
    ),
    # measure
    Case(measure.time_once_ms, lambda: measure.time_once_ms(lambda: None, 3), TypeError, "device"),
    Case(
        measure.time_ms,
        lambda: measure.time_ms(lambda: None, repeats=0, warmup=0),
        ValueError,
        "repeats",
    ),
    Case(
        measure.time_ms,
        lambda: measure.time_ms(lambda: None, repeats=1, warmup=-1),
        ValueError,
        "warmup",
    ),
    Case(measure.time_ms, lambda: measure.time_ms(None, repeats=1, warmup=0), TypeError, "fn"),
    Case(
        measure.time_ms,
        lambda: measure.time_ms(lambda: None, repeats=1, warmup=0, budget_s=0.0),
        ValueError,
        "budget_s",
    ),
    Case(
        measure.time_in_turn,
        lambda: measure.time_in_turn({}, repeats=1, warmup=0),
        ValueError,
        "fns",
    ),
    Case(
        measure.time_in_turn,
        lambda: measure.time_in_turn([len], repeats=1, warmup=0),
        TypeError,
        "fns",
    ),
    Case(
        measure.time_in_turn,
        lambda: measure.time_in_turn({"a": 1}, repeats=1, warmup=0),
        TypeError,
        "fns['a']",
    ),
    Case(
        measure.time_in_turn,
        lambda: measure.time_in_turn({"a": lambda: None}, repeats=True, warmup=0),
        TypeError,
        "repeats",
        "bool for int",
    ),
    Case(
        measure.median_ms_in_turn,
        lambda: measure.median_ms_in_turn({}, repeats=1, warmup=0),
        ValueError,
        "fns",
    ),
    Case(measure.check_load, lambda: measure.check_load(-1.0), ValueError, "before"),
    Case(measure.check_load, lambda: measure.check_load(1.0, cpus=0), ValueError, "cpus"),
    Case(
        stats.total_variation, lambda: stats.total_variation([0.5], torch.ones(1)), TypeError, "a"
    ),
    Case(
        stats.total_variation,
        lambda: stats.total_variation(torch.ones(2), torch.ones(3)),
        ValueError,
        "same shape",
    ),
    Case(stats.wilson_interval, lambda: stats.wilson_interval(5, 3), ValueError, "successes"),
    Case(stats.value_range, lambda: stats.value_range("0.5"), TypeError, "values"),
    Case(stats.value_range, lambda: stats.value_range([0.5, None]), TypeError, "values"),
    Case(stats.value_range, lambda: stats.value_range([]), ValueError, "values"),
    Case(stats.value_range, lambda: stats.value_range([0.5], digits=-1), ValueError, "digits"),
    Case(
        stats.wilson_interval, lambda: stats.wilson_interval(1, 3, level=1.5), ValueError, "level"
    ),
    Case(
        stats.image_bootstrap,
        lambda: stats.image_bootstrap(torch.arange(3.0), torch.ones(3, dtype=torch.bool)),
        TypeError,
        "image",
    ),
    Case(
        stats.image_bootstrap,
        lambda: stats.image_bootstrap(torch.arange(3), torch.ones(2, dtype=torch.bool)),
        ValueError,
        "correct",
    ),
    Case(
        stats.image_bootstrap,
        lambda: stats.image_bootstrap(
            torch.arange(3), torch.ones(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)
        ),
        ValueError,
        "within",
    ),
    Case(
        stats.image_bootstrap,
        lambda: stats.image_bootstrap(
            torch.arange(3), torch.ones(3, dtype=torch.bool), resamples=10**7
        ),
        ValueError,
        "resamples",
    ),
    Case(
        stats.image_bootstrap,
        lambda: stats.image_bootstrap(torch.arange(3), torch.ones(3, dtype=torch.bool), level=0),
        ValueError,
        "level",
    ),
    Case(
        measure.peak_memory_of,
        lambda: measure.peak_memory_of(lambda: None, "cpu", "cuda"),
        ValueError,
        "CUDA",
    ),
    Case(
        measure.peak_memory_of,
        lambda: measure.peak_memory_of(lambda: None, "cpu", "fast"),
        ValueError,
        "method",
    ),
    Case(
        measure.peak_memory_of,
        lambda: measure.peak_memory_of(lambda: None, "cpu", record=1),
        TypeError,
        "record",
    ),
    # analysis.memory
    Case(memory.saved_tensors, lambda: memory.saved_tensors(3, torch.ones(1)), TypeError, "fn"),
    Case(memory.saved_tensors, lambda: memory.saved_tensors(torch.sin), ValueError, "inputs"),
    Case(
        memory.saved_bytes,
        lambda: memory.saved_bytes(torch.sin, torch.ones(1), kind="grad"),
        ValueError,
        "kind",
    ),
    Case(
        memory.peak_memory,
        lambda: memory.peak_memory(torch.sin, torch.ones(1), method="gpu"),
        ValueError,
        "method",
    ),
    Case(
        memory.peak_memory,
        lambda: memory.peak_memory(torch.sin, torch.ones(1), method="cuda"),
        ValueError,
        "CUDA",
    ),
    Case(
        memory.peak_memory,
        lambda: memory.peak_memory(torch.sin, torch.ones(1), backward="yes"),
        TypeError,
        "backward",
    ),
    Case(memory.StorageTracker, lambda: memory.StorageTracker(record=1), TypeError, "record"),
    Case(
        memory.attention_map_bytes,
        lambda: memory.attention_map_bytes("full", 3, 3),
        ValueError,
        "kind",
    ),
    Case(
        memory.attention_map_bytes,
        lambda: memory.attention_map_bytes("dense", 3, 3.0),
        TypeError,
        "width",
    ),
    Case(
        memory.attention_map_bytes,
        lambda: memory.attention_map_bytes("dense", 3, 3, dtype="float32"),
        TypeError,
        "dtype",
    ),
    # analysis.compare
    Case(compare.Candidate, lambda: compare.Candidate("x", build=None), TypeError, "build"),
    Case(
        compare.Candidate,
        lambda: compare.Candidate("x", torch.nn.Identity, map_kind="full"),
        ValueError,
        "map_kind",
    ),
    Case(
        compare.paper_candidates,
        lambda: compare.paper_candidates(include=["rcca", "ccnet"]),
        ValueError,
        "include",
    ),
    Case(
        compare.paper_candidates,
        lambda: compare.paper_candidates(recurrences=(1, 0)),
        ValueError,
        "recurrences[1]",
    ),
    Case(
        compare.paper_candidates, lambda: compare.paper_candidates(impl="cuda"), ValueError, "impl"
    ),
    Case(
        compare.measure, lambda: compare.measure("rcca", fmap(1, 8, 4, 4)), TypeError, "candidate"
    ),
    Case(
        compare.measure,
        lambda: compare.measure(
            compare.Candidate("id", torch.nn.Identity), fmap(1, 8, 4, 4), repeats=0
        ),
        ValueError,
        "repeats",
    ),
    Case(
        compare.measure,
        lambda: compare.measure(compare.Candidate("id", torch.nn.Identity), fmap(8, 4, 4)),
        ValueError,
        "x",
    ),
    Case(
        compare.comparison_table, lambda: compare.comparison_table(height=0), ValueError, "height"
    ),
    Case(
        compare.comparison_table,
        lambda: compare.comparison_table(9, 9, 8, 2, time_budget=NAN),
        ValueError,
        "time_budget",
    ),
    Case(
        compare.comparison_table,
        lambda: compare.comparison_table(9, 9, 8, 2, device="gpu"),
        ValueError,
        "device",
    ),
    Case(compare.format_table, lambda: compare.format_table([]), ValueError, "rows"),
    Case(
        compare.format_table, lambda: compare.format_table([{"model": "x"}]), TypeError, "rows[0]"
    ),
    Case(compare.paper_claims, lambda: compare.paper_claims([row()]), ValueError, "RCCA R=2"),
    Case(
        compare.paper_claims,
        lambda: compare.paper_claims([row()], recurrence=0),
        ValueError,
        "recurrence",
    ),
    Case(
        compare.format_claims,
        lambda: compare.format_claims({"saved_ratio": 1.0}),
        ValueError,
        "flops_reduction",
    ),
    Case(
        compare.write_csv,
        lambda: compare.write_csv([row()], blocked_path(_TMP)),
        ValueError,
        "path",
    ),
    Case(
        compare.write_csv,
        lambda: compare.write_csv([row(), point()], _TMP / "x.csv"),
        ValueError,
        "rows",
    ),
    Case(
        compare.scaling_sweep, lambda: compare.scaling_sweep(sizes=[16, 0]), ValueError, "sizes[1]"
    ),
    Case(
        compare.scaling_sweep,
        lambda: compare.scaling_sweep(memory_limit_mb=-1.0),
        ValueError,
        "memory_limit_mb",
    ),
    Case(
        compare.fit_exponent,
        lambda: compare.fit_exponent([1, 2], [1.0, NAN]),
        ValueError,
        "values[1]",
    ),
    Case(
        compare.fit_exponent,
        lambda: compare.fit_exponent([1, 2, 4], [1.0, 2.0]),
        ValueError,
        "ns and values",
    ),
    Case(
        compare.fit_exponent, lambda: compare.fit_exponent([0, 2], [1.0, 2.0]), ValueError, "ns[0]"
    ),
    # analysis.plots
    Case(
        plots.plot_reachability,
        lambda: plots.plot_reachability(torch.ones(12, 12), 3, 4),
        TypeError,
        "reach",
    ),
    Case(
        plots.plot_reachability,
        lambda: plots.plot_reachability(torch.ones(12, 12, dtype=torch.bool), 3, 4, pixel=(3, 0)),
        ValueError,
        "pixel",
    ),
    Case(
        plots.plot_query_attention,
        lambda: plots.plot_query_attention(torch.ones(2, 3, 3)),
        ValueError,
        "weights",
    ),
    Case(
        plots.plot_query_attention,
        lambda: plots.plot_query_attention(-torch.ones(3, 3)),
        ValueError,
        "weights",
    ),
    Case(
        plots.plot_query_attention,
        lambda: plots.plot_query_attention(torch.ones(3, 3), vmax=0.0),
        ValueError,
        "vmax",
    ),
    Case(
        plots.plot_influence,
        lambda: plots.plot_influence(torch.rand(1, 3, 4)),
        ValueError,
        "influence",
    ),
    Case(
        plots.plot_influence,
        lambda: plots.plot_influence(torch.rand(3, 4), log=0),
        TypeError,
        "log",
    ),
    Case(
        plots.plot_influence,
        lambda: plots.plot_influence(torch.rand(3, 4), vmin="0"),
        TypeError,
        "vmin",
    ),
    Case(
        plots.plot_influence,
        lambda: plots.plot_influence(torch.rand(3, 4), vmin=1.0, vmax=-1.0),
        ValueError,
        "vmin",
    ),
    Case(plots.plot_scaling, lambda: plots.plot_scaling([point()], "flops"), ValueError, "metric"),
    Case(plots.plot_phase_breakdown, lambda: plots.plot_phase_breakdown([]), TypeError, "rows"),
    Case(
        plots.plot_phase_breakdown,
        lambda: plots.plot_phase_breakdown([{"isa": "x86-64-v4", "ms": 1.0}]),
        TypeError,
        "rows[0]",
    ),
    Case(
        plots.plot_phase_breakdown,
        lambda: plots.plot_phase_breakdown(
            [{"isa": "v4", "case": "97x97", "phase": "p", "kind": "product", "ms": -1.0}]
        ),
        ValueError,
        "ms",
    ),
    Case(plots.plot_scaling, lambda: plots.plot_scaling([row()]), TypeError, "rows[0]"),
    Case(
        plots.plot_comparison,
        lambda: plots.plot_comparison([row()], ["gflops", "speed"]),
        ValueError,
        "metrics",
    ),
    # analysis.propagation
    Case(
        propagation.logit_reach,
        lambda: propagation.logit_reach(lambda x: x),
        TypeError,
        "model must be an nn.Module",
    ),
    Case(
        propagation.logit_reach,
        lambda: propagation.logit_reach(torch.nn.Conv2d(3, 1, 1), period=0),
        ValueError,
        "period",
    ),
    Case(
        propagation.logit_reach,
        lambda: propagation.logit_reach(torch.nn.Conv2d(3, 1, 1), size=10**6),
        ValueError,
        "size",
    ),
    Case(
        propagation.logit_reach,
        lambda: propagation.logit_reach(torch.nn.Conv2d(3, 1, 9, padding=4), period=2, size=8),
        ValueError,
        "too small",
    ),
    Case(
        propagation.support_meets_beacon,
        lambda: propagation.support_meets_beacon({}, torch.zeros(8, 4, dtype=torch.int64)),
        TypeError,
        "sample",
    ),
    Case(
        propagation.support_meets_beacon,
        lambda: propagation.support_meets_beacon(data.make_sample(0, 0), torch.zeros(8, 3)),
        TypeError,
        "reach",
    ),
    Case(
        propagation.support_meets_beacon,
        lambda: propagation.support_meets_beacon(
            data.make_sample(0, 0), torch.zeros(8, 3, dtype=torch.int64)
        ),
        ValueError,
        "reach must be",
    ),
    Case(
        propagation.support_meets_beacon,
        lambda: propagation.support_meets_beacon(
            data.make_sample(0, 0), -torch.ones(8, 4, dtype=torch.int64)
        ),
        ValueError,
        "negative",
    ),
    Case(
        propagation.boolean_matmul,
        lambda: propagation.boolean_matmul(torch.ones(2, 2), torch.ones(2, 2, dtype=torch.bool)),
        TypeError,
        "a must",
    ),
    Case(
        propagation.boolean_matmul,
        lambda: propagation.boolean_matmul(torch.ones(2, 2, dtype=torch.bool), [[True]]),
        TypeError,
        "b must",
    ),
    Case(
        propagation.boolean_matmul,
        lambda: propagation.boolean_matmul(
            torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 2, dtype=torch.bool)
        ),
        ValueError,
        "a and b must chain",
    ),
    Case(
        propagation.boolean_power,
        lambda: propagation.boolean_power(torch.ones(2, 2, dtype=torch.bool), 0),
        ValueError,
        "power",
    ),
    Case(
        propagation.boolean_power,
        lambda: propagation.boolean_power(torch.ones(2, 2, dtype=torch.bool), True),
        TypeError,
        "power",
        "bool for int",
    ),
    Case(
        propagation.boolean_power,
        lambda: propagation.boolean_power(torch.ones(2, 3, dtype=torch.bool), 2),
        ValueError,
        "mask must be square",
    ),
    Case(
        propagation.criss_cross_reachability,
        lambda: propagation.criss_cross_reachability(0, 3),
        ValueError,
        "height",
    ),
    Case(
        propagation.criss_cross_reachability,
        lambda: propagation.criss_cross_reachability(3, 3, 0),
        ValueError,
        "recurrence",
    ),
    Case(
        propagation.issa_reachability,
        lambda: propagation.issa_reachability(4, 0),
        ValueError,
        "width",
    ),
    Case(
        propagation.influence_map,
        lambda: propagation.influence_map(torch.nn.Identity(), fmap(1, 2, 3, 3), (3, 0)),
        ValueError,
        "pixel",
    ),
    Case(
        propagation.influence_map,
        lambda: propagation.influence_map(torch.nn.Identity(), [[1.0]], (0, 0)),
        TypeError,
        "x",
    ),
    Case(
        propagation.influence_map,
        lambda: propagation.influence_map(
            torch.nn.Identity(), fmap(1, 2, 3, 3), (0, 0), eval_mode=0
        ),
        TypeError,
        "eval_mode",
    ),
    Case(
        propagation.influence_map,
        lambda: propagation.influence_map("identity", fmap(1, 2, 3, 3), (0, 0)),
        TypeError,
        "module",
    ),
    Case(
        propagation.mean_influence,
        lambda: propagation.mean_influence(torch.nn.Identity(), [fmap(2, 3, 3)], (0, 0)),
        ValueError,
        "inputs[0]",
    ),
    Case(
        propagation.erf_width,
        lambda: propagation.erf_width(torch.ones(3, 3, dtype=torch.bool)),
        TypeError,
        "influence",
    ),
    Case(
        propagation.erf_width,
        lambda: propagation.erf_width(torch.zeros(3, 3)),
        ValueError,
        "influence",
    ),
    Case(
        propagation.erf_width,
        lambda: propagation.erf_width(-torch.ones(3, 3)),
        ValueError,
        "influence",
    ),
    Case(
        propagation.erf_width,
        lambda: propagation.erf_width(torch.ones(3, 3), centre=3),
        ValueError,
        "centre",
    ),
    Case(
        propagation.mean_influence,
        lambda: propagation.mean_influence(torch.nn.Identity(), [], (0, 0)),
        ValueError,
        "inputs",
        "empty",
    ),
    Case(
        propagation.mean_influence,
        lambda: propagation.mean_influence(
            torch.nn.Identity(), [fmap(1, 2, 3, 3), fmap(1, 2, 3, 4)], (0, 0)
        ),
        ValueError,
        "inputs[1]",
    ),
    Case(propagation.conv_stack, lambda: propagation.conv_stack(0, 2), ValueError, "channels"),
    Case(propagation.conv_stack, lambda: propagation.conv_stack(4, 2.0), TypeError, "depth"),
    Case(
        propagation.conv_stack,
        lambda: propagation.conv_stack(4, 2, kernel_size=4),
        ValueError,
        "kernel_size",
    ),
    Case(
        propagation.conv_stack,
        lambda: propagation.conv_stack(4, 2, activation="relu"),
        TypeError,
        "activation",
    ),
    Case(propagation.linear_stack, lambda: propagation.linear_stack([]), ValueError, "layers"),
    Case(
        propagation.linear_stack,
        lambda: propagation.linear_stack((3, 1, 1)),
        TypeError,
        "layers[0]",
    ),
    Case(
        propagation.linear_stack,
        lambda: propagation.linear_stack([(3, 1, 0)]),
        ValueError,
        "layers[0] stride",
    ),
    Case(
        propagation.linear_stack,
        lambda: propagation.linear_stack([(4, 1, 1)]),
        ValueError,
        "layers[0] kernel",
    ),
    Case(
        propagation.linear_stack,
        lambda: propagation.linear_stack([(3, 1, 1)], channels=0),
        ValueError,
        "channels",
    ),
    Case(
        propagation.reach_fraction,
        lambda: propagation.reach_fraction([[True]]),
        TypeError,
        "reachability",
    ),
    Case(
        propagation.reach_fraction,
        lambda: propagation.reach_fraction(torch.ones(2, 2)),
        TypeError,
        "reachability",
    ),
    # ops (each refused before the operator is built)
    Case(ops.load, lambda: ops.load(cuda=1), TypeError, "cuda", "int for bool"),
    Case(ops.load, lambda: ops.load(verbose="yes"), TypeError, "verbose"),
    Case(ops.is_available, lambda: ops.is_available("gpu"), ValueError, "device"),
    Case(ops.is_available, lambda: ops.is_available(0), TypeError, "device"),
    Case(ops.usable_for, lambda: ops.usable_for([1.0]), TypeError, "tensor"),
    Case(ops.self_test, lambda: ops.self_test("gpu"), ValueError, "device_type"),
    Case(ops.self_test, lambda: ops.self_test(torch.device("cpu")), TypeError, "device_type"),
    Case(
        ops.criss_cross_attention,
        lambda: ops.criss_cross_attention(fmap(2, 3, 4), K(), V()),
        ValueError,
        "query",
    ),
    Case(
        ops.criss_cross_attention,
        lambda: ops.criss_cross_attention(Q(), K(), V().to("meta")),
        ValueError,
        "value on meta",
    ),
    # viz
    Case(viz.load_photo, lambda: viz.load_photo("../../etc/passwd"), ValueError, "name"),
    Case(viz.load_photo, lambda: viz.load_photo("chelsea", size=(48, 0)), ValueError, "size"),
    Case(viz.load_photo, lambda: viz.load_photo("chelsea", size=48), TypeError, "size"),
    Case(
        viz.colour_position_features,
        lambda: viz.colour_position_features(torch.rand(4, 8, 8), (2, 2)),
        ValueError,
        "image",
    ),
    Case(
        viz.colour_position_features,
        lambda: viz.colour_position_features(torch.rand(3, 8, 8), (2, 2), position_weight=NAN),
        ValueError,
        "position_weight",
    ),
    Case(
        viz.photo_attention_maps,
        lambda: viz.photo_attention_maps(
            photo(), (4, 6), temperature=0.0, block_size=(2, 2), pool=2
        ),
        ValueError,
        "temperature",
    ),
    Case(
        viz.photo_attention_maps,
        lambda: viz.photo_attention_maps(photo(), (4, 6.0), block_size=(2, 2)),
        TypeError,
        "grid",
    ),
    Case(
        viz.model_attention_maps,
        lambda: viz.model_attention_maps(torch.nn.Identity(), photo()),
        TypeError,
        "model",
    ),
    Case(
        viz.model_attention_maps,
        lambda: viz.model_attention_maps(small_model(), torch.rand(1, 3, 24, 24)),
        ValueError,
        "image",
    ),
    Case(viz.squeeze_support, lambda: viz.squeeze_support((4, 4), 0), ValueError, "pool"),
    Case(viz.squeeze_reach, lambda: viz.squeeze_reach((4, 4), 0), ValueError, "pool"),
    Case(viz.model_colour, lambda: viz.model_colour(3), TypeError, "name"),
    Case(viz.model_colour, lambda: viz.model_colour("resnet"), ValueError, "name"),
    Case(viz.flatten_maps, lambda: viz.flatten_maps({"CCA": torch.ones(4, 4)}), TypeError, "maps"),
    Case(
        viz.query_map_array,
        lambda: viz.query_map_array(torch.ones(24, 24), (4, 0), (4, 6)),
        ValueError,
        "query",
    ),
    Case(
        viz.query_map_array,
        lambda: viz.query_map_array(torch.ones(24, 24), (0, True), (4, 6)),
        TypeError,
        "query[1]",
    ),
    Case(
        viz.plot_query_maps,
        lambda: viz.plot_query_maps(photo(), maps(), (4, 6), []),
        ValueError,
        "queries",
    ),
    Case(
        viz.plot_query_maps,
        lambda: viz.plot_query_maps(photo(), maps(4, 5), (4, 6), [(0, 0)]),
        ValueError,
        "maps['CCA']",
    ),
    Case(
        viz.plot_query_maps,
        lambda: viz.plot_query_maps(photo(), maps(), (4, 6), [(0, 0)], panel_size=-1.0),
        ValueError,
        "panel_size",
    ),
    Case(
        viz.plot_criss_cross_mask,
        lambda: viz.plot_criss_cross_mask(3, 4, (3, 3)),
        ValueError,
        "query",
    ),
    Case(
        viz.plot_issa_groups, lambda: viz.plot_issa_groups(8, 8, (4, 0)), ValueError, "block_size"
    ),
    Case(viz.plot_issa_groups, lambda: viz.plot_issa_groups(8, 8, (4, 4), pad=1), TypeError, "pad"),
    Case(
        viz.plot_reachability,
        lambda: viz.plot_reachability(6, 6, (0, 0), loops=0),
        ValueError,
        "loops",
    ),
    Case(
        viz.plot_segmentation,
        lambda: viz.plot_segmentation(torch.rand(1, 3, 8, 8), torch.full((1, 8, 8), 7)),
        ValueError,
        "labels",
    ),
    Case(
        viz.plot_segmentation,
        lambda: viz.plot_segmentation(
            torch.rand(1, 3, 8, 8), torch.zeros(1, 8, 8).long(), {"fcn": torch.zeros(1, 8, 8)}
        ),
        TypeError,
        "predictions['fcn']",
    ),
    Case(
        viz.attention_animation,
        lambda: viz.attention_animation(photo(), maps(), (4, 6), [(0, 0)], interval=0),
        ValueError,
        "interval",
    ),
    Case(
        viz.attention_animation_html,
        lambda: viz.attention_animation_html(photo(), maps(), (4, 6), [(0, 0)], dpi=60.5),
        TypeError,
        "dpi",
    ),
    Case(viz.offline_jshtml, lambda: viz.offline_jshtml(None), TypeError, "html"),
    Case(
        viz.explorer,
        lambda: viz.explorer(photo(), maps(), (4, 6), start=(4, 0)),
        ValueError,
        "start",
    ),
    Case(viz.explorer, lambda: viz.explorer(photo(), {}, (4, 6)), ValueError, "maps"),
    Case(viz.figure_to_png, lambda: viz.figure_to_png("figure"), TypeError, "fig"),
    # data
    Case(data.make_sample, lambda: data.make_sample(0, -1), ValueError, "index"),
    Case(data.make_sample, lambda: data.make_sample(0.5, 0), TypeError, "seed"),
    Case(data.make_sample, lambda: data.make_sample(0, 0, size=16), ValueError, "size"),
    Case(data.make_sample, lambda: data.make_sample(0, 0, noise=NAN), ValueError, "noise"),
    Case(
        data.make_sample, lambda: data.make_sample(0, 0, beacon_size=True), TypeError, "beacon_size"
    ),
    Case(data.BeaconShapes, lambda: data.BeaconShapes(0), ValueError, "length"),
    Case(data.BeaconShapes, lambda: data.BeaconShapes(True), TypeError, "length"),
    Case(data.BeaconShapes, lambda: data.BeaconShapes(4, size=36), ValueError, "multiple of 8"),
    Case(data.BeaconShapes, lambda: data.BeaconShapes(4, num_shapes=0), ValueError, "num_shapes"),
    Case(data.BeaconShapes, lambda: data.BeaconShapes(4)[1.0], TypeError, "index"),
    Case(
        data.distance_to_beacon, lambda: data.distance_to_beacon({"label": 0}), TypeError, "sample"
    ),
    # layers
    Case(layers.relu_free_copy, lambda: layers.relu_free_copy(lambda x: x), TypeError, "module"),
    Case(layers.conv_bn_relu, lambda: layers.conv_bn_relu(8, 0, 3), ValueError, "out_channels"),
    Case(
        layers.conv_bn_relu,
        lambda: layers.conv_bn_relu(8, 8, 3.0),
        TypeError,
        "kernel_size",
        "float for int",
    ),
    # models
    Case(models.Backbone, lambda: models.Backbone(16.0), TypeError, "width"),
    Case(
        models.Backbone,
        lambda: models.Backbone(16)(fmap(1, 3, 30, 32)),
        ValueError,
        "divisible by 8",
    ),
    Case(
        models.receptive_field,
        lambda: models.receptive_field(torch.nn.Conv2d(3, 3, 1), (0, 0)),
        TypeError,
        "backbone",
    ),  # fmt: skip
    Case(
        models.receptive_field,
        lambda: models.receptive_field(models.Backbone(), (0, 0), 10**6),
        ValueError,
        "size",
        "huge",
    ),  # fmt: skip
    Case(
        models.receptive_field,
        lambda: models.receptive_field(models.Backbone(), (0, 0), 100),
        ValueError,
        "size",
        "stride",
    ),  # fmt: skip
    Case(
        models.receptive_field,
        lambda: models.receptive_field(models.Backbone(), (12, 0), 96),
        ValueError,
        "cell",
        "outside",
    ),  # fmt: skip
    Case(
        models.receptive_field,
        lambda: models.receptive_field(models.Backbone(), (0,), 96),
        ValueError,
        "cell",
        "length",
    ),  # fmt: skip
    Case(
        models.receptive_field,
        lambda: models.receptive_field(models.Backbone(), (0, 0), 96, generator=0),
        TypeError,
        "generator",
    ),  # fmt: skip
    Case(
        models.ContextHead,
        lambda: models.ContextHead(64, 4, None, dropout=-0.1),
        ValueError,
        "dropout",
    ),
    Case(models.ContextHead, lambda: models.ContextHead(64, 4, "rcca2"), TypeError, "context"),
    Case(
        models.ContextHead,
        lambda: models.ContextHead(8, 4, None)(fmap(1, 4, 2, 2)),
        ValueError,
        "in_channels=8",
    ),
    Case(models.make_context, lambda: models.make_context("deeplab", 8), ValueError, "head"),
    Case(models.make_context, lambda: models.make_context("rcca2", 0), ValueError, "channels"),
    Case(
        models.SegmentationModel,
        lambda: models.SegmentationModel("fcn", width=1e6),
        TypeError,
        "width",
        "a float is not a size",
    ),
    Case(
        models.SegmentationModel,
        lambda: models.SegmentationModel("fcn", num_classes=True),
        TypeError,
        "num_classes",
    ),
    Case(
        models.SegmentationModel,
        lambda: models.SegmentationModel("fcn", embedding_channels=-1),
        ValueError,
        "embedding_channels",
    ),
    Case(
        models.SegmentationModel,
        lambda: small_model()(fmap(1, 3, 24, 24), return_all=1),
        TypeError,
        "return_all",
    ),
    Case(models.build_model, lambda: models.build_model("fcn", dropout=NAN), ValueError, "dropout"),
    Case(
        models.check_config,
        lambda: models.check_config({"head": "fcn", "depth": 50}),
        ValueError,
        "depth",
    ),
    Case(models.check_config, lambda: models.check_config([("head", "fcn")]), TypeError, "config"),
    Case(
        models.state_dict_digest,
        lambda: models.state_dict_digest({"w": [1.0]}),
        TypeError,
        "state dict",
    ),
    Case(
        models.state_dict_digest, lambda: models.state_dict_digest("model.pt"), TypeError, "source"
    ),
    Case(
        models.save_checkpoint,
        lambda: models.save_checkpoint(blocked_path(_TMP), small_model(), {}),
        ValueError,
        "path",
    ),
    Case(
        models.save_checkpoint,
        lambda: models.save_checkpoint(_TMP / "m.pt", torch.nn.Linear(2, 2), {}),
        TypeError,
        "model",
    ),
    Case(
        models.save_checkpoint,
        lambda: models.save_checkpoint(_TMP / "m.pt", small_model(), [("seed", 0)]),
        TypeError,
        "meta",
    ),
    Case(models.load_checkpoint, lambda: models.load_checkpoint(3), TypeError, "path"),
    Case(models.load_checkpoint, lambda: models.load_checkpoint(""), ValueError, "path"),
    Case(
        models.load_checkpoint,
        lambda: models.load_checkpoint(_TMP),
        ValueError,
        "is a directory",
        "a directory",
    ),
    Case(
        checkpoint.payload_digest,
        lambda: checkpoint.payload_digest([("format", 1)]),
        TypeError,
        "payload",
    ),
    Case(
        checkpoint.payload_digest,
        lambda: checkpoint.payload_digest({"format": "x", "config": {}, "meta": {}}),
        ValueError,
        "state_dict",
    ),
    Case(
        checkpoint.payload_digest,
        lambda: checkpoint.payload_digest(
            {"format": "x", "config": {}, "meta": {"when": object()}, "state_dict": {}}
        ),
        TypeError,
        "meta",
    ),
    Case(
        models.load_checkpoint,
        lambda: models.load_checkpoint(models.CHECKPOINT_DIR / "fcn.pt", map_location="gpu0"),
        ValueError,
        "map_location",
    ),
    Case(
        models.load_pretrained,
        lambda: models.load_pretrained("../checkpoints/fcn"),
        ValueError,
        "name",
    ),
    Case(models.load_pretrained, lambda: models.load_pretrained(None), TypeError, "name"),
    Case(models.add_digest, lambda: models.add_digest(None), TypeError, "path"),
    Case(
        models.add_digest,
        lambda: models.add_digest(models.CHECKPOINT_DIR / "fcn.pt", out=blocked_path(_TMP)),
        ValueError,
        "out",
    ),
    # ccnet_edu.export: every argument checked before anything is traced
    Case(
        export.export_program,
        lambda: export.export_program("model", fmap(1, 8, 3, 4)),
        TypeError,
        "model",
    ),
    Case(
        export.export_program,
        lambda: export.export_program(cca.CrissCrossAttention(8), fmap(1, 8, 3, 4)),
        ValueError,
        "eval()",
        "training mode",
    ),
    Case(export.dynamic_shapes, lambda: export.dynamic_shapes([1, 2]), TypeError, "example"),
    Case(export.fused_ops_in, lambda: export.fused_ops_in(eval_cca()), TypeError, "program"),
    Case(export.with_impl, lambda: export.with_impl({"cca": 1}, "fused"), TypeError, "model"),
    Case(export.with_impl, lambda: export.with_impl(eval_cca(), "fast"), ValueError, "impl"),
    Case(export.onnx_session, lambda: export.onnx_session(3), TypeError, "model"),
    Case(export.onnx_session, lambda: export.onnx_session(b"", threads=0), ValueError, "threads"),
    Case(
        export.onnx_session,
        lambda: export.onnx_session(b"", threads=10**12),
        ValueError,
        "threads",
        "huge",
    ),
    Case(
        export.onnx_session,
        lambda: export.onnx_session(b"", threads=True),
        TypeError,
        "threads",
        "bool for int",
    ),
    Case(export.to_onnx, lambda: export.to_onnx(eval_cca(), "x"), TypeError, "example"),
    Case(
        export.to_onnx,
        lambda: export.to_onnx(eval_cca(), fmap(1, 8, 3, 4), blocked_path(_TMP)),
        ValueError,
        "path",
    ),
    Case(
        export.to_onnx,
        lambda: export.to_onnx(eval_cca(), fmap(1, 8, 3, 4), _TMP),
        ValueError,
        "path",
        "a directory",
    ),
    Case(
        export.to_onnx,
        lambda: export.to_onnx(eval_cca(), fmap(1, 8, 3, 4), check_inputs="x"),
        TypeError,
        "check_inputs",
    ),
    Case(
        export.to_onnx,
        lambda: export.to_onnx(eval_cca(), fmap(1, 8, 3, 4), check_inputs=[3]),
        TypeError,
        "check_inputs[0]",
    ),
    Case(
        export.to_onnx,
        lambda: export.to_onnx(eval_cca(), fmap(1, 8, 3, 4), rtol=-1),
        ValueError,
        "rtol",
    ),
    Case(
        export.to_onnx,
        lambda: export.to_onnx(eval_cca(), fmap(1, 8, 3, 4), rtol=NAN),
        ValueError,
        "rtol",
        "NaN",
    ),
    Case(
        export.to_onnx,
        lambda: export.to_onnx(eval_cca(), fmap(1, 8, 3, 4), rtol="1e-4"),
        TypeError,
        "rtol",
    ),
    Case(
        export.to_onnx,
        lambda: export.to_onnx(eval_cca(), fmap(1, 8, 3, 4), threads=0),
        ValueError,
        "threads",
    ),
    Case(
        export.to_onnx,
        lambda: export.to_onnx(eval_cca(), fmap(1, 8, 3, 4), optimize=1),
        TypeError,
        "optimize",
    ),
    Case(
        export.to_onnx,
        lambda: export.to_onnx(eval_cca(), fmap(1, 8, 3, 4), dynamic="yes"),
        TypeError,
        "dynamic",
    ),
    # ccnet_edu.ops.benchmark: sizes bounded by the memory they need, before anything exists
    Case(
        ops_bench.add_level_arguments,
        lambda: ops_bench.add_level_arguments(argparse.ArgumentParser(), 0, "runs", "levels"),
        ValueError,
        "repeats",
    ),
    Case(
        ops_bench.add_level_arguments,
        lambda: ops_bench.add_level_arguments("--isa", 7, "runs", "levels"),
        TypeError,
        "parser",
    ),
    Case(
        ops_bench.chosen_levels,
        lambda: ops_bench.chosen_levels(argparse.ArgumentParser(), "x86-64"),
        TypeError,
        "isa",
    ),
    Case(
        ops_bench.chosen_levels,
        lambda: ops_bench.chosen_levels(OneLineArgumentParser(), ["sse9"]),
        SystemExit,
        "--isa",
    ),
    Case(ops_bench.Case, lambda: ops_bench.Case(0, 8, 8, 8, 8), ValueError, "batch"),
    Case(ops_bench.Case, lambda: ops_bench.Case(1, 8.0, 8, 8, 8), TypeError, "qk_channels"),
    Case(ops_bench.run, lambda: ops_bench.run([], progress=False), ValueError, "cases"),
    Case(
        ops_bench.run,
        lambda: ops_bench.run([(1, 8, 8, 8, 8)], progress=False),
        TypeError,
        "cases[0]",
    ),
    Case(
        ops_bench.run,
        lambda: ops_bench.run([ops_bench.Case(1, 64, 512, 10**5, 10**5)], progress=False),
        ValueError,
        "the case",
        "huge",
    ),
    Case(
        ops_bench.run,
        lambda: ops_bench.run(QUICK, repeats=0, progress=False),
        ValueError,
        "repeats",
    ),
    Case(
        ops_bench.run,
        lambda: ops_bench.run(QUICK, repeats=10**12, progress=False),
        ValueError,
        "repeats",
    ),
    Case(
        ops_bench.run, lambda: ops_bench.run(QUICK, warmup=-1, progress=False), ValueError, "warmup"
    ),
    Case(
        ops_bench.run, lambda: ops_bench.run(QUICK, seed=2**70, progress=False), ValueError, "seed"
    ),
    Case(
        ops_bench.run,
        lambda: ops_bench.run(QUICK, device="meta", progress=False),
        ValueError,
        "device",
    ),
    Case(ops_bench.run, lambda: ops_bench.run(QUICK, progress=1), TypeError, "progress"),
    Case(ops_bench.matmul_gflops, lambda: ops_bench.matmul_gflops(size=10**6), ValueError, "size"),
    Case(
        ops_bench.matmul_gflops, lambda: ops_bench.matmul_gflops(repeats=0), ValueError, "repeats"
    ),
    Case(ops_bench.matmul_gflops, lambda: ops_bench.matmul_gflops(size=2.0), TypeError, "size"),
    Case(ops_bench.flops, lambda: ops_bench.flops((1, 8, 8, 8, 8), "forward"), TypeError, "case"),
    Case(ops_bench.flops, lambda: ops_bench.flops(QUICK[0], "backward"), ValueError, "mode"),
    Case(ops_bench.format_table, lambda: ops_bench.format_table("rows"), TypeError, "rows"),
    Case(
        ops_bench.format_table,
        lambda: ops_bench.format_table([bench_row()], NAN),
        ValueError,
        "gflops",
    ),
    Case(ops_bench.write_csv, lambda: ops_bench.write_csv([], _TMP / "x.csv"), ValueError, "rows"),
    Case(ops_bench.write_csv, lambda: ops_bench.write_csv([bench_row()], _TMP), ValueError, "path"),
    Case(
        ops_bench.write_csv,
        lambda: ops_bench.write_csv([bench_row()], "/dev/full"),
        ValueError,
        "not a regular file",
        "a device",
    ),
    # train
    Case(train.TrainConfig, lambda: train.TrainConfig(steps=0), ValueError, "steps"),
    Case(train.TrainConfig, lambda: train.TrainConfig(steps=10**12), ValueError, "steps", "huge"),
    Case(train.TrainConfig, lambda: train.TrainConfig(seed=2**64), ValueError, "seed", "huge"),
    Case(train.TrainConfig, lambda: train.TrainConfig(val_seed=-1), ValueError, "val_seed"),
    Case(train.TrainConfig, lambda: train.TrainConfig(val_size=10**12), ValueError, "val_size"),
    Case(
        train.train,
        lambda: train.train(train.TrainConfig(batch_size=10**12), progress=False),
        ValueError,
        "batch_size",
        "memory",
    ),
    Case(
        train.train,
        lambda: train.train(train.TrainConfig(width=10**12), progress=False),
        ValueError,
        "width",
        "memory",
    ),
    Case(
        train.estimate_memory, lambda: train.estimate_memory({"head": "fcn"}), TypeError, "config"
    ),
    Case(
        train.evaluate,
        lambda: train.evaluate(small_model(), length=10**6, batch_size=10**6, size=9600),
        ValueError,
        "batch_size",
        "memory",
    ),
    Case(train.TrainConfig, lambda: train.TrainConfig(batch_size=16.0), TypeError, "batch_size"),
    Case(train.TrainConfig, lambda: train.TrainConfig(size=100), ValueError, "size"),
    Case(train.TrainConfig, lambda: train.TrainConfig(lr=NAN), ValueError, "lr"),
    Case(train.TrainConfig, lambda: train.TrainConfig(ccl="yes"), TypeError, "ccl"),
    Case(train.TrainConfig, lambda: train.TrainConfig(epochs=3), TypeError, "epochs"),
    Case(
        train.AllReduceBatchNorm2d,
        lambda: train.AllReduceBatchNorm2d(0),
        ValueError,
        "num_features",
    ),
    Case(
        train.AllReduceBatchNorm2d,
        lambda: train.AllReduceBatchNorm2d(4, momentum=2.0),
        ValueError,
        "momentum",
    ),
    Case(
        train.convert_sync_batchnorm,
        lambda: train.convert_sync_batchnorm(small_model(), "gpu"),
        ValueError,
        "device",
    ),
    Case(
        train.convert_sync_batchnorm,
        lambda: train.convert_sync_batchnorm({"bn": 1}, "cpu"),
        TypeError,
        "model",
    ),
    Case(
        train.segmentation_loss,
        lambda: train.segmentation_loss(
            {"logits": fmap(2, 4, 8, 8)}, torch.zeros(2, 8, 8), None, 1.0
        ),
        TypeError,
        "labels",
    ),
    Case(
        train.segmentation_loss,
        lambda: train.segmentation_loss(
            {"logits": fmap(2, 4, 8, 8)}, torch.zeros(2, 8, 6).long(), None, 1.0
        ),
        ValueError,
        "labels",
    ),
    Case(
        train.segmentation_loss,
        lambda: train.segmentation_loss(
            {"logits": fmap(2, 4, 8, 8)}, torch.zeros(2, 8, 8).long(), None, NAN
        ),
        ValueError,
        "ccl_weight",
    ),
    Case(train.train, lambda: train.train({"head": "fcn"}), TypeError, "config"),
    Case(train.train, lambda: train.train(train.TrainConfig(), device="gpu"), ValueError, "device"),
    Case(train.evaluate, lambda: train.evaluate(small_model(), length=0), ValueError, "length"),
    Case(train.evaluate, lambda: train.evaluate(small_model(), size=36), ValueError, "size"),
    Case(
        train.evaluate,
        lambda: train.evaluate(small_model(), batch_size=2.5),
        TypeError,
        "batch_size",
    ),
    Case(
        train.confusion_matrix,
        lambda: train.confusion_matrix(torch.tensor([0, 9]), torch.tensor([0, 1]), 4),
        ValueError,
        "pred",
        "values beyond num_classes",
    ),
    Case(
        train.confusion_matrix,
        lambda: train.confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1.0]), 4),
        TypeError,
        "target",
    ),
    Case(
        train.confusion_matrix,
        lambda: train.confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1]), 0),
        ValueError,
        "num_classes",
    ),
    Case(
        train.metrics_from_confusion,
        lambda: train.metrics_from_confusion(torch.ones(4, 3)),
        ValueError,
        "confusion",
    ),
    Case(
        train.checkpoint_name,
        lambda: train.checkpoint_name("rcca2", True, 0.0),
        ValueError,
        "ccl_weight",
    ),
    Case(
        train.checkpoint_name, lambda: train.checkpoint_name("rcca2", seed=-1), ValueError, "seed"
    ),
    Case(train.loss_curve, lambda: train.loss_curve([{"loss": 1.0}], every=0), ValueError, "every"),
    Case(train.loss_curve, lambda: train.loss_curve("loss"), TypeError, "log"),
    # the command lines (exit code 2, one line on stderr naming the option)
    Case(train.main, lambda: train.main(["--steps", "0"]), SystemExit, "--steps"),
    Case(train.main, lambda: train.main(["--dropout", "nan"]), SystemExit, "--dropout"),
    Case(train.main, lambda: train.main(["--size", "36"]), SystemExit, "--size"),
    Case(train.main, lambda: train.main(["--batch-size", "true"]), SystemExit, "--batch-size"),
    Case(train.main, lambda: train.main(["--save", str(blocked_path(_TMP))]), SystemExit, "--save"),
    Case(
        train.main, lambda: train.main(["--save", str(_TMP)]), SystemExit, "--save", "a directory"
    ),
    Case(train.main, lambda: train.main(["--head", "deeplab"]), SystemExit, "--head"),
    Case(train.main, lambda: train.main(["--ccl-weight", "0"]), SystemExit, "--ccl-weight"),
    Case(train.main, lambda: train.main(["--lr", "inf"]), SystemExit, "--lr"),
    Case(train.main, lambda: train.main(["--seed", str(10**12)]), SystemExit, "--seed", "huge"),
    Case(train.main, lambda: train.main(["--val-seed", "1.5"]), SystemExit, "--val-seed"),
    Case(train.main, lambda: train.main(["--val-size", str(10**12)]), SystemExit, "--val-size"),
    Case(
        train.main,
        lambda: train.main(["--batch-size", str(10**12)]),
        SystemExit,
        "--batch-size",
        "memory",
    ),
    Case(train.main, lambda: train.main(["--width", str(10**12)]), SystemExit, "--width", "memory"),
    Case(
        train.main,
        lambda: train.main(["--mid-channels", str(10**12)]),
        SystemExit,
        "--mid-channels",
        "memory",
    ),
    Case(train.main, lambda: train.main(["--size", str(10**12)]), SystemExit, "--size", "memory"),
    Case(train.main, lambda: train.main(["--threads", str(10**12)]), SystemExit, "--threads"),
    Case(train.main, lambda: train.main(["--device", "meta"]), SystemExit, "--device"),
    Case(train.main, lambda: train.main(["--device", "mps"]), SystemExit, "--device"),
    Case(train.main, lambda: train.main(["--device", "xla"]), SystemExit, "--device"),
    Case(train.main, lambda: train.main(["--all", "--names", "deeplab"]), SystemExit, "--names"),
    Case(train.main, lambda: train.main(["--all", "--seeds", "-1"]), SystemExit, "--seeds"),
    Case(
        train.main,
        lambda: train.main(["--all", "--seeds", str(2**40)]),
        SystemExit,
        "--seeds",
        "huge",
    ),
    Case(
        train.main,
        lambda: train.main(["--all", "--out-dir", str(blocked_path(_TMP))]),
        SystemExit,
        "--out-dir",
    ),
    Case(
        train.main,
        lambda: train.main(["--digest-dir", str(blocked_path(_TMP).parent / "a_file")]),
        SystemExit,
        "--digest-dir",
    ),
    Case(analysis_cli.main, lambda: analysis_cli.main(["--width", "0"]), SystemExit, "--width"),
    Case(
        analysis_cli.main, lambda: analysis_cli.main(["--channels", "-3"]), SystemExit, "--channels"
    ),
    Case(
        analysis_cli.main,
        lambda: analysis_cli.main(["--qk-channels", "x"]),
        SystemExit,
        "--qk-channels",
    ),
    Case(
        analysis_cli.main,
        lambda: analysis_cli.main(["--batch", str(10**12)]),
        SystemExit,
        "--batch",
        "memory",
    ),
    Case(
        analysis_cli.main,
        lambda: analysis_cli.main(["--repeats", str(10**12)]),
        SystemExit,
        "--repeats",
    ),
    Case(analysis_cli.main, lambda: analysis_cli.main(["--impl", "flex"]), SystemExit, "--impl"),
    Case(
        analysis_cli.main, lambda: analysis_cli.main(["--device", "meta"]), SystemExit, "--device"
    ),
    Case(
        analysis_cli.main,
        lambda: analysis_cli.main(["--sweep", "--sizes", "0"]),
        SystemExit,
        "--sizes",
    ),
    Case(
        analysis_cli.main,
        lambda: analysis_cli.main(["--sweep", "--sizes", str(10**6)]),
        SystemExit,
        "--sizes",
        "memory",
    ),
    Case(
        analysis_cli.main,
        lambda: analysis_cli.main(["--sweep", "--memory-limit-mb", "1e12"]),
        SystemExit,
        "--memory-limit-mb",
    ),
    Case(analysis_cli.main, lambda: analysis_cli.main(["--csv", str(_TMP)]), SystemExit, "--csv"),
    Case(
        ops_cli.main,
        lambda: ops_cli.main(["bench", "--repeats", str(10**12)]),
        SystemExit,
        "--repeats",
        "huge",
    ),
    Case(
        ops_cli.main,
        lambda: ops_cli.main(["bench", "--csv", "/dev/full"]),
        SystemExit,
        "--csv",
        "a device",
    ),
    Case(checkpoint.main, lambda: checkpoint.main(["redigest", str(_TMP)]), SystemExit, "PATH"),
    Case(checkpoint.main, lambda: checkpoint.main(["redigest", ""]), SystemExit, "PATH", "empty"),
    Case(
        line_products.main, lambda: line_products.main(["--threads", "0"]), SystemExit, "--threads"
    ),
    Case(
        line_products.main,
        lambda: line_products.main(["--threads", str(10**12)]),
        SystemExit,
        "--threads",
        "huge",
    ),
    Case(
        line_products.main, lambda: line_products.main(["--repeats", "0"]), SystemExit, "--repeats"
    ),
    Case(
        line_products.main,
        lambda: line_products.main(["--out", str(_TMP)]),
        SystemExit,
        "--out",
        "a directory",
    ),
    Case(line_products.main, lambda: line_products.main(["--isa", "sse9"]), SystemExit, "--isa"),
    Case(cpu_isa.main, lambda: cpu_isa.main(["--repeats", "2.5"]), SystemExit, "--repeats"),
    Case(build_pdf.main, lambda: build_pdf.main(["--chapters", "0"]), SystemExit, "--chapters"),
    Case(
        build_pdf.main,
        lambda: build_pdf.main(["--chapters", str(10**12)]),
        SystemExit,
        "--chapters",
        "huge",
    ),
    Case(
        build_pdf.main,
        lambda: build_pdf.main(["--chapters", "999"]),
        SystemExit,
        "--chapters",
        "more than the book has",
    ),
    Case(
        build_pdf.main,
        lambda: build_pdf.main(["--out", str(_TMP)]),
        SystemExit,
        "--out",
        "a directory",
    ),
    Case(
        cpu_isa.main,
        lambda: cpu_isa.main(["--out", str(blocked_path(_TMP).parent / "a_file")]),
        SystemExit,
        "--out",
    ),
    Case(cpu_isa.main, lambda: cpu_isa.main(["--isa", "sse9"]), SystemExit, "--isa"),
    Case(cpu_phases.main, lambda: cpu_phases.main(["--repeats", "2.5"]), SystemExit, "--repeats"),
    Case(cpu_phases.main, lambda: cpu_phases.main(["--threads", "0"]), SystemExit, "--threads"),
    Case(cpu_phases.main, lambda: cpu_phases.main(["--isa", "sse9"]), SystemExit, "--isa"),
    Case(
        cpu_phases.main,
        lambda: cpu_phases.main(["--out", str(blocked_path(_TMP).parent / "a_file")]),
        SystemExit,
        "--out",
    ),
    Case(analysis_cli.main, lambda: analysis_cli.main(["--height", "0"]), SystemExit, "--height"),
    Case(
        analysis_cli.main,
        lambda: analysis_cli.main(["--time-budget", "-1"]),
        SystemExit,
        "--time-budget",
    ),
    Case(
        analysis_cli.main,
        lambda: analysis_cli.main(["--png", str(blocked_path(_TMP))]),
        SystemExit,
        "--png",
    ),
    Case(ops_cli.main, lambda: ops_cli.main(["bench", "--repeats", "0"]), SystemExit, "--repeats"),
    Case(
        ops_cli.main, lambda: ops_cli.main(["bench", "--repeats", "2.5"]), SystemExit, "--repeats"
    ),
    Case(ops_cli.main, lambda: ops_cli.main(["bench", "--device", "gpu"]), SystemExit, "--device"),
    Case(
        ops_cli.main,
        lambda: ops_cli.main(["bench", "--device", "cuda:999"]),
        SystemExit,
        "--device",
        "no such GPU",
    ),
    Case(
        ops_cli.main,
        lambda: ops_cli.main(["bench", "--csv", str(blocked_path(_TMP))]),
        SystemExit,
        "--csv",
    ),
    Case(
        ops_cli.main,
        lambda: ops_cli.main(["bench", "--csv", str(_TMP)]),
        SystemExit,
        "--csv",
        "a directory",
    ),
]


CASES += [
    Case(flops.axial_flops, lambda: flops.axial_flops(9, 9, 0, 4), ValueError, "channels"),
    Case(flops.axial_flops, lambda: flops.axial_flops(9, 9.0, 8, 4), TypeError, "width"),
    Case(
        propagation.axial_reachability,
        lambda: propagation.axial_reachability(0, 4),
        ValueError,
        "height",
    ),
    Case(
        propagation.axial_reachability,
        lambda: propagation.axial_reachability(3, True),
        TypeError,
        "width",
    ),
    Case(
        beacon_attention.farthest_off_cross_query,
        lambda: beacon_attention.farthest_off_cross_query(0),
        ValueError,
        "length",
    ),
    Case(
        beacon_attention.farthest_off_cross_query,
        lambda: beacon_attention.farthest_off_cross_query(5, val_seed=1.0),
        TypeError,
        "val_seed",
    ),
    Case(
        beacon_attention.share_on,
        lambda: beacon_attention.share_on(torch.eye(6), (0, 3), torch.ones(2, 3, dtype=torch.bool)),
        ValueError,
        "query",
    ),
    Case(
        beacon_attention.share_on,
        lambda: beacon_attention.share_on(torch.eye(6), (0, 0), torch.ones(2, 3)),
        TypeError,
        "cells",
    ),
    Case(
        beacon_attention.shares_on,
        lambda: beacon_attention.shares_on(
            torch.eye(4), torch.zeros(1, 2, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool)
        ),
        ValueError,
        "attention",
    ),
    Case(
        beacon_attention.shares_on,
        lambda: beacon_attention.shares_on(
            torch.eye(6), torch.zeros(1, 2), torch.ones(2, 3, dtype=torch.bool)
        ),
        TypeError,
        "queries",
    ),
    Case(axial.relative_offsets, lambda: axial.relative_offsets(0, 2), ValueError, "length"),
    Case(
        axial.relative_offsets,
        lambda: axial.relative_offsets(4, 2.0),
        TypeError,
        "span",
        "float for int",
    ),
    Case(axial.relative_offsets, lambda: axial.relative_offsets(4, 3, 3), TypeError, "device"),
    Case(
        axial.axial_line_attention,
        lambda: axial.axial_line_attention(Q(), K(), V(), axis="depth"),
        ValueError,
        "axis",
    ),
    Case(
        axial.axial_line_attention,
        lambda: axial.axial_line_attention(fmap(2, 3, 4), K(), V(), axis="height"),
        ValueError,
        "query",
        "rank",
    ),
    Case(
        axial.axial_line_attention,
        lambda: axial.axial_line_attention(Q(), K(), V(), axis="width", heads=True),
        TypeError,
        "heads",
        "bool for int",
    ),
    Case(
        axial.axial_line_attention,
        lambda: axial.axial_line_attention(Q(), K(), V(), axis="width", heads=2),
        ValueError,
        "heads",
    ),
    Case(
        axial.axial_line_attention,
        lambda: axial.axial_line_attention(Q(), K(), fmap(1, 5, 3, 4, device="meta"), axis="width"),
        ValueError,
        "device",
        "devices",
    ),
    Case(
        axial.axial_line_attention,
        lambda: axial.axial_line_attention(Q(), K(), V(), axis="width", rel_query=torch.ones(4, 2)),
        ValueError,
        "rel_query",
    ),
    Case(
        axial.axial_line_attention,
        lambda: axial.axial_line_attention(
            Q(), K(), V(), axis="width", rel_query=torch.ones(3, 2), rel_value=torch.ones(5, 5)
        ),
        ValueError,
        "one span",
    ),
    Case(
        axial.axial_line_attention,
        lambda: axial.axial_line_attention(Q(), K(), V(), axis="width", span=0),
        ValueError,
        "span",
    ),
    Case(
        axial.axial_line_attention,
        lambda: axial.axial_line_attention(Q(), K(), V(), axis="width", span=4),
        ValueError,
        "span must be odd",
        "even span",
    ),
    Case(
        axial.axial_line_attention,
        lambda: axial.axial_line_attention(Q(), K(), V(), axis="width", span=3, impl="flex"),
        ValueError,
        "impl",
    ),
    Case(
        axial.axial_line_attention,
        lambda: axial.axial_line_attention(Q(), K(), V(), axis="width", impl="fused"),
        ValueError,
        "impl",
    ),
    Case(
        axial.axial_line_attention,
        lambda: axial.axial_line_attention(
            fmap(1, 2, 0, 4), fmap(1, 2, 0, 4), fmap(1, 5, 0, 4), axis="width"
        ),
        ValueError,
        "query",
        "empty",
    ),
    Case(axial.axial_mask, lambda: axial.axial_mask(3, 4, "diagonal"), ValueError, "axis"),
    Case(axial.axial_mask, lambda: axial.axial_mask(3, -4, "width"), ValueError, "width"),
    Case(
        axial.axial_mask,
        lambda: axial.axial_mask(3, 4, "width", span=NAN),
        TypeError,
        "span",
        "NaN",
    ),
    Case(
        axial.axial_attention_to_dense,
        lambda: axial.axial_attention_to_dense(torch.rand(1, 1, 3, 4, 4)),
        ValueError,
        "attention_height",
    ),
    Case(
        axial.axial_attention_to_dense,
        lambda: axial.axial_attention_to_dense(torch.rand(1, 3, 4, 3)),
        ValueError,
        "attention_height",
        "rank",
    ),
    Case(
        axial.axial_attention_to_dense,
        lambda: axial.axial_attention_to_dense(
            torch.rand(1, 1, 3, 4, 3), torch.rand(1, 1, 3, 4, 3)
        ),
        ValueError,
        "attention_width",
    ),
    Case(
        axial.AxialAttentionLayer, lambda: axial.AxialAttentionLayer(8, "rows"), ValueError, "axis"
    ),
    Case(
        axial.AxialAttentionLayer,
        lambda: axial.AxialAttentionLayer(0, "width"),
        ValueError,
        "in_channels",
    ),
    Case(
        axial.AxialAttentionLayer,
        lambda: axial.AxialAttentionLayer(8, "width", heads=3),
        ValueError,
        "heads",
    ),
    Case(
        axial.AxialAttentionLayer,
        lambda: axial.AxialAttentionLayer(8, "width", positional=True),
        ValueError,
        "span",
    ),
    Case(
        axial.AxialAttentionLayer,
        lambda: axial.AxialAttentionLayer(8, "width", positional=1),
        TypeError,
        "positional",
    ),
    Case(
        axial.AxialAttentionLayer,
        lambda: axial.AxialAttentionLayer(8, "width")(fmap(1, 4, 3, 3)),
        ValueError,
        "x",
    ),
    Case(
        axial.AxialAttention,
        lambda: axial.AxialAttention(8, qk_channels=0),
        ValueError,
        "qk_channels",
    ),
    Case(
        axial.AxialAttention,
        lambda: axial.AxialAttention(8, span=9001, positional=True),
        ValueError,
        "span",
    ),
    Case(
        axial.AxialAttention,
        lambda: axial.AxialAttention(8)(fmap(1, 8, 3, 3, device="meta")),
        ValueError,
        "device",
        "devices",
    ),
    Case(
        axial.AxialAttention,
        lambda: axial.AxialAttention(8)(fmap(1, 8, 3, 3), return_attention="yes"),
        TypeError,
        "return_attention",
    ),
]

# the kernels' CPU emulation and the roofline counts: shapes checked before the C side
# divides by a dimension or sizes a buffer
EMU_Q = (1, 4, 3, 5)  # (B, C', H, W); value (1, 6, 3, 5)
CASES += [
    Case(
        emulation.forward,
        lambda: emulation.forward(fmap(4, 3, 5), fmap(4, 3, 5), fmap(6, 3, 5)),
        ValueError,
        "query",
    ),
    Case(
        emulation.forward,
        lambda: emulation.forward(*(fmap(*EMU_Q, dtype=torch.float64) for _ in range(3))),
        TypeError,
        "query's dtype",
    ),
    Case(
        emulation.forward,
        lambda: emulation.forward(fmap(*EMU_Q), fmap(*EMU_Q), fmap(1, 6, 3, 5), l2_bytes=-1),
        ValueError,
        "l2_bytes",
    ),
    Case(
        emulation.forward,
        lambda: emulation.forward(fmap(*EMU_Q), fmap(*EMU_Q), fmap(1, 6, 3, 5), reverse=1),
        TypeError,
        "reverse",
    ),
    Case(
        emulation.backward,
        lambda: emulation.backward(
            fmap(1, 5, 3, 5), None, fmap(1, 3, 5, 7), fmap(*EMU_Q), fmap(*EMU_Q), fmap(1, 6, 3, 5)
        ),
        ValueError,
        "grad_out",
    ),
    Case(
        emulation.backward,
        lambda: emulation.backward(
            fmap(1, 6, 3, 5), None, fmap(1, 3, 5, 8), fmap(*EMU_Q), fmap(*EMU_Q), fmap(1, 6, 3, 5)
        ),
        ValueError,
        "attention",
    ),
    Case(
        emulation.supported,
        lambda: emulation.supported((1, 8, -1, 4, 4), torch.float32),
        ValueError,
        "shape's C",
    ),
    Case(emulation.grid, lambda: emulation.grid("nope", 0, (1, 8, 16, 4, 4)), ValueError, "pass_"),
    Case(
        emulation.grid, lambda: emulation.grid("agg", 2, (1, 8, 16, 4, 4)), ValueError, "direction"
    ),
    Case(
        emulation.decode,
        lambda: emulation.decode("agg", 0, (1, 8, 16, 4, 4), 10**6),
        ValueError,
        "index",
    ),
    Case(
        emulation.smem_bytes,
        lambda: emulation.smem_bytes("agg", (1, 8, 16, 4, 4), torch.float64),
        TypeError,
        "dtype",
    ),
    Case(
        emulation.plan,
        lambda: emulation.plan((1, 8, 0, 4, 4), torch.float32, "backward", 2**20),
        ValueError,
        "shape's C",
    ),
    Case(
        emulation.plan,
        lambda: emulation.plan((1, 8, 16, 4, 4), torch.float32, "sideways", 2**20),
        ValueError,
        "mode",
    ),
    Case(
        emulation.launches,
        lambda: emulation.launches((10**5, 8, 64, 4, 4), torch.float32, "backward", 2**20),
        ValueError,
        "shape's B",
    ),
    Case(
        emulation.launches,
        lambda: emulation.launches((1, 8, 64, 4, 0.5), torch.float32, "backward", 2**20),
        TypeError,
        "shape's W",
    ),
    Case(
        emulation.launches,
        lambda: emulation.launches((4096, 1, 2**16, 1, 1), torch.float32, "backward", 512),
        ValueError,
        "launches",
    ),
    Case(
        emulation.decode,
        lambda: emulation.decode("agg", 1, (1, 8, 16, 1, 4), 0),
        ValueError,
        "no CTAs",
    ),
    Case(
        roofline.v2_slices,
        lambda: roofline.v2_slices((1, 1, 10**12, 1, 1), 4, "backward", 1),
        ValueError,
        "shape's C",
    ),
    Case(
        emulation.plan,
        lambda: emulation.plan((1, 8, 2**16 + 1, 4, 4), torch.float32, "backward", 2**20),
        ValueError,
        "shape's C",
    ),
    Case(
        emulation.plan,
        lambda: emulation.plan((1, 8, 16, 4, 4), torch.float32, "backward", 2**64),
        ValueError,
        "l2_bytes",
    ),
    Case(
        emulation.launches,
        lambda: emulation.launches((1, 8, 16, 4, 4), torch.float32, "backward", 2**62 + 1),
        ValueError,
        "l2_bytes",
    ),
    Case(
        emulation.forward,
        lambda: emulation.forward(fmap(*EMU_Q), fmap(*EMU_Q), fmap(1, 6, 3, 5), l2_bytes=2**62 + 1),
        ValueError,
        "l2_bytes",
    ),
    Case(
        emulation.backward,
        lambda: emulation.backward(
            fmap(1, 6, 3, 5),
            None,
            fmap(1, 3, 5, 7),
            fmap(*EMU_Q),
            fmap(*EMU_Q),
            fmap(1, 6, 3, 5),
            l2_bytes=2**62 + 1,
        ),
        ValueError,
        "l2_bytes",
    ),
    Case(
        roofline.design_costs,
        lambda: roofline.design_costs((1, 64, 512, 2**16 + 1, 97), 2, "backward", "v4"),
        ValueError,
        "shape's H",
    ),
    Case(
        roofline.v4_backward_plan,
        lambda: roofline.v4_backward_plan(roofline.SHAPES[0], 2, 10**400),
        ValueError,
        "l2_bytes",
    ),
    Case(emulation.merge_lse, lambda: emulation.merge_lse(0.0, 0.5, 0.0, 1.0), ValueError, "s_row"),
    Case(
        emulation.merge_lse,
        lambda: emulation.merge_lse(float("nan"), 1.0, 0.0, 1.0),
        ValueError,
        "m_row",
    ),
    Case(emulation.merge_lse, lambda: emulation.merge_lse(0.0, 1.0, "x", 1.0), TypeError, "m_col"),
    Case(
        roofline.costs,
        lambda: roofline.costs((0, 64, 512, 97, 97), 2, "forward"),
        ValueError,
        "shape's B",
    ),
    Case(
        roofline.costs,
        lambda: roofline.costs(roofline.SHAPES[0], 3, "forward"),
        ValueError,
        "element_bytes",
    ),
    Case(roofline.costs, lambda: roofline.costs(roofline.SHAPES[0], 2, "both"), ValueError, "mode"),
    Case(
        roofline.design_costs,
        lambda: roofline.design_costs(roofline.SHAPES[0], 2, "forward", "v9"),
        ValueError,
        "design",
    ),
    Case(
        roofline.design_costs,
        lambda: roofline.design_costs((1, 64, 512, 97), 2, "forward", "v4"),
        TypeError,
        "shape",
    ),
    Case(
        roofline.floor_seconds,
        lambda: roofline.floor_seconds((1.0, 2.0), 1e12, 1e12),
        TypeError,
        "c must",
    ),
    Case(
        roofline.floor_seconds,
        lambda: roofline.floor_seconds(roofline.costs(roofline.SHAPES[0], 2, "forward"), 0, 1e12),
        ValueError,
        "bandwidth",
    ),
    Case(
        roofline.peak_rate,
        lambda: roofline.peak_rate("H100", 2),
        TypeError,
        "ceiling",
    ),
    Case(
        roofline.v2_slices,
        lambda: roofline.v2_slices(roofline.SHAPES[0], 2, "forward+backward"),
        ValueError,
        "mode",
    ),
    Case(
        roofline.v3_backward_slices,
        lambda: roofline.v3_backward_slices(roofline.SHAPES[0], 2, -1),
        ValueError,
        "l2_bytes",
    ),
    Case(
        roofline.v4_kept_bytes,
        lambda: roofline.v4_kept_bytes(roofline.SHAPES[0], 2, 0),
        ValueError,
        "width",
    ),
    Case(
        roofline.v4_backward_plan,
        lambda: roofline.v4_backward_plan(roofline.SHAPES[0], 8),
        ValueError,
        "element_bytes",
    ),
]


@pytest.fixture(autouse=True)
def _tmp_dir(tmp_path):
    """Cases that need a path get one under this test's tmp_path."""
    global _TMP
    _TMP = tmp_path


def _id(case: Case) -> str:
    return f"{case.target.__qualname__}-{case.names}" + (f"-{case.label}" if case.label else "")


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_bad_input_is_refused_naming_the_argument(case, capsys):
    with pytest.raises(case.error) as info:
        case.call()
    if case.error is SystemExit:
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ": error: " in err, err
        assert case.names in err, err
    else:
        assert type(info.value) is case.error, info.value  # not a subclass standing in for it
        assert case.names in str(info.value), str(info.value)


def _public_names() -> dict[str, str]:
    """``{canonical name: where it is public}`` for every callable in a public ``__all__``."""
    names: dict[str, str] = {}
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, types.ModuleType) or not callable(obj):
                continue  # submodules and constants (HEADS, PHOTOS, SHIPPED, ...)
            names.setdefault(key(obj), f"{module_name}.{name}")
    return names


def _uncovered() -> list[str]:
    covered = {key(case.target) for case in CASES}
    return sorted(set(_public_names()) - covered - set(EXEMPT))


def test_every_public_name_has_a_case():
    public = _public_names()
    covered = {key(case.target) for case in CASES}
    missing = _uncovered()
    assert not missing, f"public names without a bad-input case: {missing}"
    assert not (covered & set(EXEMPT)), "an exempt name has a case now: drop it from EXEMPT"
    assert set(EXEMPT) <= set(public), "stale EXEMPT entries"


def test_a_new_public_name_without_a_case_is_caught(monkeypatch):
    def new_helper(x: int) -> int:  # a public function nobody wrote a case for
        return x

    new_helper.__module__, new_helper.__qualname__ = "ccnet_edu.dense", "new_helper"
    monkeypatch.setattr(dense, "new_helper", new_helper, raising=False)
    monkeypatch.setattr(dense, "__all__", [*dense.__all__, "new_helper"])
    assert _uncovered() == ["ccnet_edu.dense.new_helper"]


def test_the_table_is_broad():
    assert len(CASES) >= 60
    kinds = {case.label for case in CASES}
    for label in ("rank", "devices", "bool for int", "float for int", "NaN", "empty"):
        assert any(label in k for k in kinds), label
    assert ccnet_edu.__all__  # the package itself is walked too (MODULES[0])


# --------------------------------------------------------------------------- command lines


class _Parser(Exception):
    """Raised instead of parsing: carries the parser a command line built."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser


def _parser_of(main: Callable) -> argparse.ArgumentParser:
    """The parser ``main`` builds, caught at its ``parse_args`` (nothing else runs)."""

    def capture(self, *args, **kwargs):
        raise _Parser(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", capture)
        with pytest.raises(_Parser) as caught:
            main([])
    return caught.value.parser


def _options(parser: argparse.ArgumentParser) -> set[str]:
    """Every option (its longest spelling) and positional that takes a value, subcommands'
    too; flags take none (``--quiet``), so there is no bad value to give them."""
    found: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _options(sub)
        elif action.nargs == 0:
            continue  # --help and the store_true / store_false flags
        elif action.option_strings:
            found.add(max(action.option_strings, key=len))
        else:
            found.add(action.metavar or action.dest.upper())
    return found


def _uncovered_options() -> list[str]:
    covered = {(key(c.target), c.names) for c in CASES if c.error is SystemExit}
    return sorted(
        f"{name} {option}"
        for name, main in CLIS.items()
        for option in _options(_parser_of(main))
        if (key(main), option) not in covered
    )


def test_every_cli_option_has_a_case():
    missing = _uncovered_options()
    assert not missing, f"command-line options without a bad-input case: {missing}"


def test_a_new_cli_option_without_a_case_is_caught(monkeypatch):
    from ccnet_edu import train_cli

    build = train_cli.build_parser

    def with_new_option():
        parser = build()
        parser.add_argument("--new-size", type=int, default=1)
        return parser

    monkeypatch.setattr(train_cli, "build_parser", with_new_option)
    assert _uncovered_options() == ["python -m ccnet_edu.train --new-size"]


def _command_files() -> set[str]:
    """Every file that runs as a command: ``__main__.py`` modules, and modules and scripts
    with a ``__name__ == "__main__"`` block."""
    found = set()
    for folder in ("ccnet_edu", "benchmarks", "tools"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            if path.name == "__main__.py" or '__name__ == "__main__"' in text:
                found.add(path.relative_to(ROOT).as_posix())
    return found


def _cli_file(main: Callable) -> str:
    module = main.__module__
    if module.startswith("benchmarks."):
        return f"benchmarks/{module.split('.', 1)[1]}.py"
    return module.replace(".", "/") + ".py"


def test_every_command_line_is_in_the_table():
    listed = {_cli_file(main) for main in CLIS.values()}
    missing = _command_files() - listed - set(CLI_EXEMPT)
    assert not missing, f"commands neither in CLIS nor in CLI_EXEMPT: {sorted(missing)}"
    assert set(CLI_EXEMPT) <= _command_files(), "stale CLI_EXEMPT entries"
    assert not (listed & set(CLI_EXEMPT)), "a command in CLIS is also exempt: drop it"
