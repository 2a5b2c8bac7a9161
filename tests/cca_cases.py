"""Cases shared by the tests of the tiled criss-cross kernels: on the CPU through their
emulation (``test_cuda_emulation.py``) and on a GPU (``test_gpu.py``)."""

from __future__ import annotations

import torch

from ccnet_edu import functional as Fn

# Relative (norm-wise) error against float64 that each dtype must stay under.  float32
# runs as 3xTF32 (about 2^-21 per product); float16/bfloat16 keep 11/8 significant bits
# in their inputs, in the weights rounded for the tensor cores, and in the outputs; float64
# runs on the portable kernels.
REL_TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}

# (B, C', C, H, W): odd and non-square; one row, one column, one pixel; lines longer
# than a 64-position tile and block (several of each, the last partial); C' not a
# multiple of 16, the widest C' (128); C not a multiple of 8 (no 16-byte vectors) and
# C over one 128-channel chunk with a partial last chunk.
SHAPES = [
    (2, 5, 7, 5, 9),
    (1, 3, 4, 1, 6),
    (3, 2, 33, 7, 1),
    (2, 4, 19, 1, 1),
    (1, 16, 136, 9, 70),
    (2, 8, 24, 67, 3),
    (1, 128, 16, 6, 5),
]


def qkv_case(shape, dtype, seed=0, device="cpu"):
    """query, key, value, the gradient of out and the gradient of the attention, random."""
    batch, qk, channels, height, width = shape
    g = torch.Generator().manual_seed(seed)
    sizes = [(batch, qk, height, width)] * 2 + [(batch, channels, height, width)] * 2
    q, k, v, go = (torch.randn(s, generator=g).to(device, dtype) for s in sizes)
    ga = torch.randn(batch, height, width, height + width - 1, generator=g).to(device, dtype)
    return q, k, v, go, ga


def float64_reference(q, k, v, go, ga):
    """out, attention and the three gradients in float64 from the same (rounded) inputs."""
    qd, kd, vd = (t.double().requires_grad_() for t in (q, k, v))
    out, att = Fn.criss_cross_attention_reference(qd, kd, vd)
    loss = (out * go.double()).sum() + (att * ga.double()).sum()
    return [out.detach(), att.detach(), *torch.autograd.grad(loss, (qd, kd, vd))]
