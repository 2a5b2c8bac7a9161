"""Cost and propagation analysis of the attention blocks, from measurement.

* :mod:`~ccnet_edu.analysis.flops` -- counted FLOPs (``FlopCounterMode``, taught
  a formula for the fused criss-cross operator) and the closed forms of the costs
  (CCNet, Huang et al., ICCV 2019, Sec. 3.2; ISSA Sec. 3; non-local Sec. 3);
* :mod:`~ccnet_edu.analysis.memory` -- bytes saved for backward (exact, via
  ``saved_tensors_hooks``) and peak memory of forward + backward (CUDA
  allocator statistics, or storage tracking on the CPU);
* :mod:`~ccnet_edu.analysis.compare` -- the comparison table at the CCNet
  setting and the scaling sweep;
* :mod:`~ccnet_edu.analysis.propagation` -- exact reachability (boolean
  matrix powers) and measured influence (gradients);
* :mod:`~ccnet_edu.analysis.plots` -- drawing all of the above;
* :mod:`~ccnet_edu.analysis.stats` -- total-variation distance, value ranges, Wilson's
  binomial interval and the image (cluster) bootstrap, shared by the chapters.

``python -m ccnet_edu.analysis`` prints the comparison table.
"""

from __future__ import annotations

from .compare import (
    Candidate,
    Row,
    SweepPoint,
    comparison_table,
    fit_exponent,
    format_claims,
    format_table,
    measure,
    paper_candidates,
    paper_claims,
    scaling_sweep,
    write_csv,
)
from .flops import (
    AttentionFlopCounter,
    axial_flops,
    cca_flops,
    count_flops,
    duplicate_centre_flops,
    einsum_flops,
    flop_formulas,
    flops_by_kind,
    flops_by_module,
    issa_flops,
    nonlocal_flops,
    rcca_flops,
)
from .memory import (
    MAP_KINDS,
    PeakMemory,
    SavedTensor,
    SavedTensors,
    StorageTracker,
    attention_map_bytes,
    peak_memory,
    saved_bytes,
    saved_tensors,
)
from .propagation import (
    axial_reachability,
    boolean_matmul,
    boolean_power,
    conv_stack,
    criss_cross_reachability,
    erf_width,
    influence_map,
    issa_reachability,
    linear_stack,
    logit_reach,
    mean_influence,
    reach_fraction,
    support_meets_beacon,
)
from .stats import (
    BootstrapInterval,
    image_bootstrap,
    total_variation,
    value_range,
    wilson_interval,
)

__all__ = [
    "BootstrapInterval",
    "image_bootstrap",
    "total_variation",
    "value_range",
    "wilson_interval",
    "Candidate",
    "Row",
    "SweepPoint",
    "comparison_table",
    "fit_exponent",
    "format_claims",
    "format_table",
    "measure",
    "paper_candidates",
    "paper_claims",
    "scaling_sweep",
    "write_csv",
    "AttentionFlopCounter",
    "axial_flops",
    "cca_flops",
    "count_flops",
    "duplicate_centre_flops",
    "einsum_flops",
    "flop_formulas",
    "flops_by_kind",
    "flops_by_module",
    "issa_flops",
    "nonlocal_flops",
    "rcca_flops",
    "PeakMemory",
    "SavedTensor",
    "SavedTensors",
    "StorageTracker",
    "MAP_KINDS",
    "attention_map_bytes",
    "peak_memory",
    "saved_bytes",
    "saved_tensors",
    "axial_reachability",
    "boolean_matmul",
    "boolean_power",
    "conv_stack",
    "criss_cross_reachability",
    "erf_width",
    "influence_map",
    "issa_reachability",
    "linear_stack",
    "logit_reach",
    "mean_influence",
    "reach_fraction",
    "support_meets_beacon",
]
