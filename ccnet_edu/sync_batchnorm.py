"""Batch norm with statistics over every process of a distributed run, on any backend.

In a DistributedDataParallel run each process sees its slice of the global
batch.  Synchronised batch norm takes the mean and variance over the whole
global batch, as one process with the whole batch would.  torch's
``SyncBatchNorm`` does it on CUDA (NCCL); on the CPU (gloo), where it does not
run, :class:`AllReduceBatchNorm2d` does the same with differentiable
all-reduces.  :func:`convert_sync_batchnorm` picks one by device.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ._checks import check_bool, check_device, check_float, check_int, check_probability

__all__ = ["AllReduceBatchNorm2d", "convert_sync_batchnorm"]


class _AllReduceSum(torch.autograd.Function):
    """Sum a tensor over all processes; the gradient is summed the same way.

    Every process's loss depends on the sum, so d(total loss)/d(local tensor)
    is the sum over processes of d(loss_r)/d(sum): another all-reduce.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose batch statistics are taken over all processes (any backend).

    The per-process sums of x and x^2 and the pixel counts are added with a
    *differentiable* all-reduce, so the gradient flows through the shared
    statistics exactly as in a single large batch.  Outside a process group
    (or in eval mode) it is an ordinary BatchNorm2d.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        check_int("num_features", num_features, minimum=1)
        check_float("eps", eps, minimum=0.0, exclusive_minimum=True)
        check_probability("momentum", momentum)
        check_bool("affine", affine)
        if track_running_stats is not True:
            raise ValueError("track_running_stats must be True (the statistics are all-reduced)")
        super().__init__(num_features, eps, momentum, affine, track_running_stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        if dist.get_world_size() == 1:
            return super().forward(x)
        channels = x.shape[1]
        count = x.new_full((1,), x.numel() / channels)
        stats = torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), count])  # (2C+1,)
        stats = _AllReduceSum.apply(stats)  # sum over processes, gradient included
        total = stats[-1]
        mean = stats[:channels] / total  # (C,)
        var = stats[channels : 2 * channels] / total - mean * mean  # biased, as BN normalises
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            unbiased = var.detach() * total / (total - 1).clamp(min=1)
            self.running_var.mul_(1 - m).add_(m * unbiased)
        inv_std = torch.rsqrt(var + self.eps)
        y = (x - mean[None, :, None, None]) * inv_std[None, :, None, None]
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Synchronise every BatchNorm2d across processes: torch's SyncBatchNorm on CUDA,
    :class:`AllReduceBatchNorm2d` elsewhere."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    device = check_device("device", device)
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def swap(module: nn.Module) -> nn.Module:
        for name, child in module.named_children():
            if type(child) is nn.BatchNorm2d:
                new = AllReduceBatchNorm2d(
                    child.num_features, child.eps, child.momentum, child.affine
                ).to(child.weight.device)
                new.load_state_dict(child.state_dict())
                setattr(module, name, new)
            else:
                swap(child)
        return module

    return swap(model)
