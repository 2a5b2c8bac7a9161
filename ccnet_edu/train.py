"""Train and evaluate the heads of :mod:`ccnet_edu.models` on the beacon-shapes task.

Single process (CPU or GPU)::

    python -m ccnet_edu.train --head rcca2 --steps 500 --save rcca2.pt
    python -m ccnet_edu.train --all          # the shipped checkpoints (see CHECKPOINT_COMMAND)

Several processes with DistributedDataParallel (gloo on CPU, NCCL on GPU)::

    torchrun --standalone --nproc_per_node=2 -m ccnet_edu.train --ddp --head rcca2

In a distributed run every process takes its own slice of each global batch,
DDP averages the gradients, and the batch norms are synchronised (torch's
``SyncBatchNorm`` on CUDA; on the CPU, where torch's SyncBatchNorm does not
run, :class:`AllReduceBatchNorm2d` does the same with differentiable
all-reduces over gloo).

Everything is seeded: the samples are a function of ``(seed, index)``
(:mod:`ccnet_edu.data`), the initial weights of ``--seed``, so one command
gives one result (on one machine and one torch version).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import NUM_CLASSES, BeaconShapes, distance_to_beacon, make_sample
from .models import (
    CHECKPOINT_DIR,
    HEADS,
    SegmentationModel,
    save_checkpoint,
    state_dict_digest,
)

__all__ = [
    "TrainConfig",
    "AllReduceBatchNorm2d",
    "convert_sync_batchnorm",
    "segmentation_loss",
    "train",
    "evaluate",
    "confusion_matrix",
    "metrics_from_confusion",
    "main",
    "CHECKPOINT_COMMAND",
    "SHIPPED",
]

# The command that produces the checkpoints in ccnet_edu/checkpoints/; with
# ``--seed 1`` it writes the ``*_seed1`` set.  Each checkpoint also records,
# in ``meta["command"]``, the exact command that made it: the seed-0 set was
# made by two processes side by side, each ``--all --seed 0 --threads 1
# --names ...`` for half of the models (the same result: every model is
# trained from its own seed), the seed-1 set by ``--all --seed 1 --threads 1``.
CHECKPOINT_COMMAND = "python -m ccnet_edu.train --all --seed 0"
# name -> (head, use the category consistent loss)
SHIPPED = {
    "fcn": ("fcn", False),
    "rcca1": ("rcca1", False),
    "rcca2": ("rcca2", False),
    "nonlocal": ("nonlocal", False),
    "isa": ("isa", False),
    "sa": ("sa", False),
    "rcca2_ccl": ("rcca2", True),
}
# Pixels farther than this (Chebyshev, in pixels) from the beacon are "far":
# beyond half the 35-pixel receptive field of the backbone, with margin.
FAR = 24


class TrainConfig(dict):
    """The hyper-parameters of a run (a dict, so it goes into the checkpoint as is)."""

    DEFAULTS: dict[str, Any] = dict(
        head="rcca2",
        ccl=False,
        ccl_weight=1.0,
        steps=800,
        batch_size=16,
        lr=4e-3,
        weight_decay=1e-4,
        seed=0,
        size=96,
        width=16,
        mid_channels=32,
        dropout=0.1,
        sync_bn=True,
        val_seed=10_000,
        val_size=200,
    )

    def __init__(self, **kwargs: Any):
        unknown = set(kwargs) - set(self.DEFAULTS)
        if unknown:
            raise TypeError(f"unknown TrainConfig keys {sorted(unknown)}")
        super().__init__({**self.DEFAULTS, **kwargs})
        if self["head"] not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self['head']!r}")
        for key in ("steps", "batch_size", "size"):
            if int(self[key]) < 1:
                raise ValueError(f"{key} must be >= 1, got {self[key]}")


# --------------------------------------------------------------------------- sync batch norm


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


# --------------------------------------------------------------------------- loss and metrics


def segmentation_loss(
    out: dict[str, Any], labels: torch.Tensor, ccl: nn.Module | None, ccl_weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy on the full-size logits [+ ``ccl_weight`` x category consistent loss].

    The CCL works on the embedding at feature resolution (stride 8), so the
    labels are taken at the centre of each 8x8 cell (nearest neighbour).
    """
    loss = F.cross_entropy(out["logits"], labels)
    parts = {"ce": float(loss.detach())}
    if ccl is not None:
        embedding = out["embedding"]  # (B, E, h, w)
        small = F.interpolate(labels[:, None].float(), size=embedding.shape[-2:], mode="nearest")
        extra = ccl(embedding, small[:, 0].long())
        extra = extra if isinstance(extra, torch.Tensor) else extra[0]
        parts["ccl"] = float(extra.detach())
        loss = loss + ccl_weight * extra
    return loss, parts


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts, rows = true class, columns = predicted class."""
    index = target.reshape(-1) * num_classes + pred.reshape(-1)
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def metrics_from_confusion(confusion: torch.Tensor) -> dict[str, Any]:
    """mIoU (over classes present in targets or predictions), pixel accuracy, per-class IoU."""
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = tp / union.clamp(min=1)
    present = union > 0
    return {
        "miou": float(iou[present].mean()),
        "pixel_acc": float(tp.sum() / confusion.sum().clamp(min=1)),
        "iou": [float(v) for v in iou],
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    *,
    seed: int = 10_000,
    length: int = 200,
    size: int = 96,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """mIoU, pixel accuracy and per-class IoU on ``length`` validation samples of ``seed``.

    Also ``far_acc``: the accuracy on shape pixels more than :data:`FAR`
    pixels from the beacon, the part of the task that needs context.
    """
    was_training = model.training
    model.eval()
    confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    far_correct = far_total = 0
    starts = range(0, length, batch_size)
    for start in tqdm(starts, desc="eval", disable=not progress, leave=False):
        stop = min(start + batch_size, length)
        samples = [make_sample(seed, i, size=size) for i in range(start, stop)]
        images = torch.stack([s["image"] for s in samples]).to(device)
        labels = torch.stack([s["label"] for s in samples])
        pred = model(images).argmax(1).cpu()  # (B, S, S)
        confusion += confusion_matrix(pred, labels, NUM_CLASSES)
        far = torch.stack([(distance_to_beacon(s) > FAR) & s["shape_mask"] for s in samples])
        far_correct += int((pred[far] == labels[far]).sum())
        far_total += int(far.sum())
    model.train(was_training)
    result = metrics_from_confusion(confusion)
    result["far_acc"] = far_correct / max(far_total, 1)
    return result


# --------------------------------------------------------------------------- training


def poly_lr(base: float, step: int, total: int, power: float = 0.9) -> float:
    """The "poly" schedule of CCNet / DeepLab: base * (1 - step/total)^power."""
    return base * (1 - step / total) ** power


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(
    config: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    log: list[dict[str, float]] | None = None,
) -> nn.Module:
    """Train one model from scratch; returns it (unwrapped, in eval mode).

    Inside an initialised process group (see :func:`main` with ``--ddp``)
    the model is wrapped in DistributedDataParallel with synchronised batch
    norm and each process trains on its slice of every global batch.
    ``log`` (if given) receives one dict of losses per step.
    """
    device = torch.device(device)
    rank, world = _dist_info()
    torch.manual_seed(config["seed"])  # same initial weights in every process
    model: nn.Module = SegmentationModel(
        config["head"],
        width=config["width"],
        mid_channels=config["mid_channels"],
        embedding_channels=16 if config["ccl"] else 0,
        dropout=config["dropout"],
    ).to(device)
    ccl = None
    if config["ccl"]:
        from .losses import CategoryConsistentLoss

        ccl = CategoryConsistentLoss(num_classes=NUM_CLASSES)
    if world > 1:
        if config["sync_bn"]:
            model = convert_sync_batchnorm(model, device)
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    # Different dropout masks per process; the data split already differs.
    torch.manual_seed(config["seed"] * 1000 + rank + 1)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"]
    )
    batch, steps = config["batch_size"], config["steps"]
    if batch % world:
        raise ValueError(f"batch_size {batch} must be divisible by the world size {world}")
    local = batch // world
    data = BeaconShapes(steps * batch, seed=config["seed"], size=config["size"])
    model.train()
    bar = tqdm(range(steps), desc=config["head"] + ("+ccl" if config["ccl"] else ""),
               disable=not progress or rank != 0)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = poly_lr(config["lr"], step, steps)
        # Global batch `step` = samples [step*batch, (step+1)*batch); this rank's slice:
        first = step * batch + rank * local
        images, labels = data.batch(range(first, first + local))
        images, labels = images.to(device), labels.to(device)
        out = model(images, return_all=True)
        loss, parts = segmentation_loss(out, labels, ccl, config["ccl_weight"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        parts["loss"] = float(loss.detach())
        if log is not None:
            log.append(parts)
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{parts['loss']:.3f}")
    model = getattr(model, "module", model)
    model.eval()
    return model


def _checkpoint_name(head: str, ccl: bool) -> str:
    return head + ("_ccl" if ccl else "")


def _run_one(config: TrainConfig, args: argparse.Namespace, device: torch.device,
             save: Path | None, command: str) -> dict[str, Any]:
    rank, world = _dist_info()
    start = time.perf_counter()
    model = train(config, device=device, progress=not args.quiet)
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {}
    if rank == 0 and config["val_size"] > 0:
        result = evaluate(model, seed=config["val_seed"], length=config["val_size"],
                          size=config["size"], device=device, progress=not args.quiet)
        print(f"{_checkpoint_name(config['head'], config['ccl']):>10}: "
              f"mIoU {result['miou']:.3f}  pixel acc {result['pixel_acc']:.3f}  "
              f"far-shape acc {result['far_acc']:.3f}  ({seconds:.0f} s)", flush=True)
    if args.digest_dir:
        digest = state_dict_digest(model)
        Path(args.digest_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.digest_dir) / f"rank{rank}.txt").write_text(digest + "\n")
    if save is not None and rank == 0:
        # Back to plain BatchNorm2d names/types: the state dict is the same either way.
        meta = {
            "command": command,
            "seed": config["seed"],
            "config": dict(config),
            "metrics": result,
            "world_size": world,
            "train_seconds": round(seconds, 1),
            "torch": str(torch.__version__),
        }
        plain = SegmentationModel(**model.config)
        plain.load_state_dict(model.state_dict())
        save_checkpoint(save, plain, meta)
        print(f"saved {save} ({save.stat().st_size / 1024:.0f} KiB)", flush=True)
    return result


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig.DEFAULTS
    p = argparse.ArgumentParser(
        prog="python -m ccnet_edu.train", description=__doc__.split("\n")[0]
    )
    p.add_argument("--head", choices=HEADS, default=d["head"])
    p.add_argument("--all", action="store_true",
                   help="train every shipped model and write ccnet_edu/checkpoints/*.pt")
    p.add_argument("--names", default=None,
                   help="with --all: only these shipped models, comma-separated "
                   f"(from {','.join(SHIPPED)})")
    p.add_argument("--ccl", action="store_true", help="add the category consistent loss")
    p.add_argument("--ccl-weight", type=float, default=d["ccl_weight"])
    p.add_argument("--steps", type=int, default=d["steps"])
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="global batch size")
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--size", type=int, default=d["size"], help="image side (multiple of 8)")
    p.add_argument("--width", type=int, default=d["width"])
    p.add_argument("--mid-channels", type=int, default=d["mid_channels"])
    p.add_argument("--dropout", type=float, default=d["dropout"])
    p.add_argument("--val-size", type=int, default=d["val_size"], help="0 skips evaluation")
    p.add_argument("--val-seed", type=int, default=d["val_seed"])
    p.add_argument("--save", type=Path, default=None, help="checkpoint path")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="with --all: where to write NAME[_seed<S>].pt (default: the package's "
                   "checkpoints folder)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: cores / processes)")
    p.add_argument("--ddp", action="store_true", help="run under torchrun with DDP")
    p.add_argument("--no-sync-bn", action="store_true",
                   help="with --ddp: per-process batch norm statistics (for comparison)")
    p.add_argument("--digest-dir", default=None,
                   help="write each rank's final state-dict SHA-256 to DIR/rank<r>.txt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = build_parser().parse_args(argv)
    command = "python -m ccnet_edu.train " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if args.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if args.ddp:
        if "RANK" not in os.environ:
            raise SystemExit("--ddp needs the environment set by torchrun "
                             "(torchrun --standalone --nproc_per_node=2 -m ccnet_edu.train --ddp)")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    world = dist.get_world_size() if args.ddp else 1
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))

    def config_for(head: str, ccl: bool) -> TrainConfig:
        return TrainConfig(head=head, ccl=ccl, ccl_weight=args.ccl_weight, steps=args.steps,
                           batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                           size=args.size, width=args.width, mid_channels=args.mid_channels,
                           dropout=args.dropout, sync_bn=not args.no_sync_bn,
                           val_seed=args.val_seed, val_size=args.val_size)

    results = []
    try:
        if args.all:
            names = args.names.split(",") if args.names else list(SHIPPED)
            unknown = [n for n in names if n not in SHIPPED]
            if unknown:
                raise SystemExit(f"--names: unknown {unknown}; shipped models: {list(SHIPPED)}")
            out_dir = args.out_dir or CHECKPOINT_DIR
            suffix = f"_seed{args.seed}" if args.seed != 0 else ""
            for name in names:
                head, ccl = SHIPPED[name]
                results.append(_run_one(config_for(head, ccl), args, device,
                                        out_dir / f"{name}{suffix}.pt", command))
        else:
            results.append(_run_one(config_for(args.head, args.ccl), args, device,
                                    args.save, command))
    finally:
        if args.ddp:
            with contextlib.suppress(Exception):
                dist.barrier()
            dist.destroy_process_group()
    return results


if __name__ == "__main__":
    main()
