"""Train and evaluate the heads of :mod:`ccnet_edu.models` on the beacon-shapes task.

:class:`TrainConfig` holds the hyper-parameters of a run, each checked when
the config is made; :func:`train` trains one model from scratch (single
process, or one process of a DistributedDataParallel run with synchronised
batch norm, :mod:`ccnet_edu.sync_batchnorm`); :func:`segmentation_loss` is
its loss and :func:`evaluate` its validation (mIoU, pixel accuracy, far-pixel
accuracy).  The command line that trains the shipped checkpoints,
``python -m ccnet_edu.train``, is :mod:`ccnet_edu.train_cli` (its ``main``
and ``build_parser`` are importable from here too).

Everything is seeded: the samples are a function of ``(seed, index)``
(:mod:`ccnet_edu.data`; their noise bitwise so per CPU kernel family), the
initial weights of ``config.seed``, so one run gives one result (on one
machine and one torch version).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import Field, dataclass, field, fields
from typing import Any, get_type_hints

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ._checks import (
    MAX_SEED,
    check_bool,
    check_channels,
    check_choice,
    check_device,
    check_float,
    check_int,
    check_memory,
    check_str,
    check_tensor,
)
from .data import NUM_CLASSES, BeaconShapes, distance_to_beacon, make_sample
from .models import HEADS, SegmentationModel
from .sync_batchnorm import AllReduceBatchNorm2d, convert_sync_batchnorm

# The command line lives in ccnet_edu.train_cli (which imports this module); its entry
# points stay importable from here.
_CLI_NAMES = ("main", "build_parser")

__all__ = [
    "TrainConfig",
    "AllReduceBatchNorm2d",
    "convert_sync_batchnorm",
    "segmentation_loss",
    "train",
    "evaluate",
    "confusion_matrix",
    "metrics_from_confusion",
    *_CLI_NAMES,
    "checkpoint_name",
    "loss_curve",
    "estimate_memory",
    "CHECKPOINT_COMMAND",
    "SHIPPED",
]

# The command that writes the checkpoints in ccnet_edu/checkpoints/: five seeds
# of every shipped model (``NAME.pt`` for seed 0, ``NAME_seed<k>.pt``), then the
# CCL at weight 0.1 with ``--names rcca2_ccl --ccl-weight 0.1`` added.  Each
# checkpoint also records, in ``meta["command"]``, the exact command that made
# it: the shipped files were made by two single-threaded processes side by side
# (``--threads 1``, the models split with ``--names``; every model is trained
# from its own seed, so the split does not change a result).
CHECKPOINT_COMMAND = "python -m ccnet_edu.train --all --seeds 0 1 2 3 4 --overwrite-shipped"
# name -> (head, use the category consistent loss)
SHIPPED = {
    "fcn": ("fcn", False),
    "rcca1": ("rcca1", False),
    "rcca2": ("rcca2", False),
    "nonlocal": ("nonlocal", False),
    "isa": ("isa", False),
    "sa": ("sa", False),
    "axial": ("axial", False),
    "rcca2_ccl": ("rcca2", True),
}
# Pixels farther than this (Chebyshev, in pixels) from the beacon are "far":
# beyond the 17 pixels either side of one backbone cell's 35-pixel receptive
# field.  A pixel's logits are the bilinear upsampling of cells up to 11 pixels
# away, so they can draw on input pixels up to 28 pixels away, in some
# directions only (the reach depends on the direction and on the pixel's place
# in its cell: analysis.propagation.logit_reach).  A few far pixels can
# therefore still take part of their logit from a cell that sees the beacon
# (chapter 9 counts them with analysis.propagation.support_meets_beacon).
FAR = 24
# The smallest image side: a multiple of the output stride 8 with room for
# the beacon and the shapes (make_sample needs 4 * beacon_size = 24).
MIN_SIZE = 24
# meta["loss_curve"] holds the mean loss of every window of this many steps.
LOSS_CURVE_EVERY = 20
# The most optimizer steps (and validation samples) a run takes: train(log=...) keeps one
# dict of losses per step, a few hundred bytes each, so a million steps stay well within
# memory (the shipped runs take 800).
MAX_STEPS = 1_000_000


def _field(default: Any, help: str, *, cli: bool = True, **rule: Any) -> Any:
    """A :class:`TrainConfig` field: its default, its help text and the rule its value obeys.

    ``rule``: ``minimum``, ``maximum`` (and ``exclusive_minimum``) for numbers,
    ``multiple_of`` (with ``why``, said in the message) for ints, ``choices``
    for strings.  The same rule checks the field in :class:`TrainConfig` and
    types its option in :func:`build_parser`; ``cli=False`` leaves the field
    off the command line.
    """
    return field(default=default, metadata={"help": help, "cli": cli, **rule})


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The hyper-parameters of a run, each checked when the config is made.

    A wrong type raises ``TypeError`` and a wrong value ``ValueError``, naming
    the field.  ``dataclasses.asdict(config)`` is what a checkpoint stores in
    ``meta["config"]``; the options of the command line are generated from
    these fields (:func:`build_parser`).
    """

    head: str = _field("rcca2", "the head to train", choices=HEADS)
    ccl: bool = _field(False, "add the category consistent loss")
    ccl_weight: float = _field(
        1.0,
        "weight of the CCL (> 0); != 1 is recorded in the name: rcca2_ccl0.1",
        minimum=0.0,
        exclusive_minimum=True,
    )
    steps: int = _field(800, "optimizer steps", minimum=1, maximum=MAX_STEPS)
    batch_size: int = _field(
        16, "global batch size (a multiple of the number of processes)", minimum=1
    )
    lr: float = _field(
        4e-3, "peak learning rate of AdamW (poly schedule)", minimum=0.0, exclusive_minimum=True
    )
    weight_decay: float = _field(1e-4, "AdamW weight decay", minimum=0.0, cli=False)
    seed: int = _field(
        0,
        "seed of the initial weights and of the training samples",
        minimum=0,
        maximum=MAX_SEED,
    )
    size: int = _field(
        96,
        f"image side (a multiple of 8, >= {MIN_SIZE})",
        minimum=MIN_SIZE,
        multiple_of=8,
        why="the output stride",
    )
    width: int = _field(16, "backbone width w (its features have 4w channels)", minimum=1)
    mid_channels: int = _field(32, "channels of the head around the context module", minimum=1)
    dropout: float = _field(
        0.1, "Dropout2d probability before the classifier", minimum=0.0, maximum=1.0
    )
    sync_bn: bool = _field(
        True,
        "synchronise the batch norm statistics over the processes of a --ddp run "
        "(per-process statistics are for comparison)",
    )
    val_seed: int = _field(10_000, "seed of the validation samples", minimum=0, maximum=MAX_SEED)
    val_size: int = _field(
        200, "validation samples (0 skips evaluation)", minimum=0, maximum=MAX_STEPS
    )

    def __post_init__(self) -> None:
        kinds = get_type_hints(TrainConfig)
        for f in fields(self):
            object.__setattr__(self, f.name, _check_field(f, kinds[f.name], getattr(self, f.name)))


def _check_field(f: Field, kind: type, value: object) -> Any:
    """``value`` checked against the rule of field ``f`` (of type ``kind``); returns it."""
    rule = f.metadata
    if kind is bool:
        return check_bool(f.name, value)
    if kind is str:
        return check_choice(f.name, check_str(f.name, value), rule["choices"])
    if kind is int:
        value = check_int(f.name, value, minimum=rule.get("minimum"), maximum=rule.get("maximum"))
        multiple = rule.get("multiple_of")
        if multiple and value % multiple:
            raise ValueError(
                f"{f.name} must be a multiple of {multiple} ({rule['why']}), got {value}"
            )
        return value
    if kind is float:
        return check_float(
            f.name,
            value,
            minimum=rule.get("minimum"),
            maximum=rule.get("maximum"),
            exclusive_minimum=rule.get("exclusive_minimum", False),
        )
    raise TypeError(f"TrainConfig.{f.name}: no rule for fields of type {kind}")


def _check_like_field(name: str, value: object) -> Any:
    """``value`` checked by the rule of the :class:`TrainConfig` field ``name``."""
    (f,) = (f for f in fields(TrainConfig) if f.name == name)
    return _check_field(f, get_type_hints(TrainConfig)[name], value)


# --------------------------------------------------------------------------- loss and metrics


def _check_loss_inputs(out: object, labels: object, ccl: object, ccl_weight: object) -> None:
    """The arguments of :func:`segmentation_loss`, checked."""
    if not isinstance(out, dict) or "logits" not in out:
        raise TypeError("out must be the dict a SegmentationModel returns with return_all=True")
    logits = out["logits"]
    check_tensor("out['logits']", logits, dim=4, kind="float", layout="(B, K, H, W)")
    check_tensor("labels", labels, dim=3, kind="int", layout="(B, H, W)")
    if labels.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"labels must have shape (B, H, W) = {tuple(logits.shape[:1] + logits.shape[2:])} "
            f"(the logits' batch and size), got {tuple(labels.shape)}"
        )
    if ccl is not None and not isinstance(ccl, nn.Module):
        raise TypeError(f"ccl must be an nn.Module or None, got {type(ccl).__name__}")
    if ccl is not None and "embedding" not in out:
        raise ValueError("ccl needs out['embedding']: build the model with embedding_channels > 0")
    check_float("ccl_weight", ccl_weight, minimum=0.0)


def segmentation_loss(
    out: dict[str, Any], labels: torch.Tensor, ccl: nn.Module | None, ccl_weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy on the full-size logits [+ ``ccl_weight`` x category consistent loss].

    The CCL works on the embedding at feature resolution (stride 8), so it gets
    the label of pixel ``(8i, 8j)`` for feature cell ``(i, j)`` (``mode="nearest"``
    takes source index ``floor(8 i)``: the top-left pixel of each 8x8 cell, the
    pixel on which the cell's receptive field is centred, not the cell's centre).
    """
    _check_loss_inputs(out, labels, ccl, ccl_weight)
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
    """(K, K) int64 counts, rows = true class, columns = predicted class.

    Every entry of ``pred`` and ``target`` must lie in ``[0, K)``: the counts
    are sized by ``num_classes``, never by the data.
    """
    num_classes = check_channels("num_classes", num_classes, minimum=1)
    check_tensor("pred", pred, kind="int", nonempty=False)
    check_tensor("target", target, kind="int", nonempty=False)
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have one shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    for name, t in (("pred", pred), ("target", target)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(
                f"{name} must hold classes in [0, num_classes={num_classes}), got values in "
                f"[{int(t.min())}, {int(t.max())}]"
            )
    index = target.reshape(-1) * num_classes + pred.reshape(-1)
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def metrics_from_confusion(confusion: torch.Tensor) -> dict[str, Any]:
    """mIoU (over classes present in targets or predictions), pixel accuracy, per-class IoU."""
    check_tensor("confusion", confusion, dim=2, layout="(K, K)")
    if confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be square (K, K), got {tuple(confusion.shape)}")
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


def _parameters(config: TrainConfig) -> float:
    """Parameters of the model ``config`` trains, counted on the ``meta`` device (no memory);
    ``inf`` for sizes no tensor can have."""
    try:
        with torch.device("meta"):
            model = SegmentationModel(
                config.head,
                width=config.width,
                mid_channels=config.mid_channels,
                embedding_channels=16 if config.ccl else 0,
                dropout=config.dropout,
            )
        return float(sum(p.numel() for p in model.parameters()))
    except (RuntimeError, OverflowError, MemoryError, ValueError):
        # ValueError: a width over the modules' own bound (MAX_CHANNELS); the estimate then
        # refuses the run naming the training options, not the module's argument
        return float("inf")


def _floats_per_image(head: str, size: int, width: int, mid_channels: int) -> float:
    """Activations one image keeps for the backward pass, in floats (an over-estimate).

    Each conv + BN + ReLU keeps three outputs; at full resolution the input, the labels,
    the upsampled logits, their softmax and gradient; at stride 8 the head and the
    context module, whose attention map is ``f x f`` for the non-local block (``f`` the
    feature pixels), ``f x (H + W)`` per loop for criss-cross attention, less for the
    others.
    """
    pixels, features, side = float(size) ** 2, (float(size) / 8) ** 2, float(size) / 8
    k = NUM_CLASSES
    floats = (5 + 3 * k) * pixels  # input, labels (int64), logits, softmax, gradient
    floats += 6 * width * pixels / 4 + 6 * width * pixels / 16  # stride 2 and 4
    floats += 24 * width * features  # the two stride-8 layers
    floats += (7 * mid_channels + 4 * width + 192 + k + 16) * features  # the head
    if head == "nonlocal":
        floats += 3 * features**2
    elif head == "isa":
        floats += 6 * features * (16 + features / 16)
    else:
        floats += 6 * features * 2 * side + 10 * mid_channels * features
    return floats


def estimate_memory(config: TrainConfig) -> float:
    """Bytes a training run of ``config`` needs at its peak, estimated before anything exists.

    Twice the float32 activations a batch keeps for its backward pass (they and their
    gradients), the weights with their gradients and AdamW's two moments, and the batch
    of samples built on the CPU.  An over-estimate by design: :func:`train` and the
    command line refuse a run whose estimate exceeds
    :func:`~ccnet_edu._checks.memory_limit` before building anything.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    per_image = _floats_per_image(config.head, config.size, config.width, config.mid_channels)
    activations = 2 * 4 * config.batch_size * per_image
    weights = 4 * 4 * _parameters(config)
    samples = 4 * config.batch_size * float(config.size) ** 2 * (3 + 2)
    return activations + weights + samples


_SIZED_BY = ("batch_size", "size", "width", "mid_channels")


def _check_run_memory(config: TrainConfig, device: torch.device, *, options: bool = False) -> None:
    """Refuse ``config`` when :func:`estimate_memory` exceeds the memory of ``device``.

    ``options`` names the fields as the command line's options (``--batch-size``).
    """
    name = (lambda f: "--" + f.replace("_", "-")) if options else (lambda f: f)
    asked = ", ".join(f"{name(f)} {getattr(config, f)}" for f in _SIZED_BY)
    check_memory(
        f"training {config.head} with {asked}",
        estimate_memory(config),
        device,
        hint=f"lower {', '.join(name(f) for f in _SIZED_BY)}",
    )


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
    pixels from the beacon, the part of the task that needs context (the
    logits of all but a few of them cannot draw on a beacon pixel, see :data:`FAR`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_int("seed", seed, minimum=0)
    length = check_int("length", length, minimum=1)
    size = _check_like_field("size", size)  # the image side of a run, same rule
    batch_size = check_int("batch_size", batch_size, minimum=1)
    device = check_device("device", device)
    check_bool("progress", progress)
    images = min(batch_size, length)
    check_memory(
        f"evaluating batch_size {batch_size} (of length {length}) at size {size}",
        # the samples (image, label, masks) and a model's activations, ~20 floats per pixel
        4 * images * float(size) ** 2 * 20,
        device,
        hint="lower batch_size or size",
    )
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


def _check_train_args(
    config: object, device: object, progress: object, log: object
) -> torch.device:
    """The arguments of :func:`train`, checked before anything is built."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    device = check_device("device", device)
    check_bool("progress", progress)
    if log is not None and not isinstance(log, list):
        raise TypeError(f"log must be a list or None, got {type(log).__name__}")
    world = _dist_info()[1]
    if config.batch_size % world:
        raise ValueError(
            f"batch_size {config.batch_size} must be divisible by the world size {world}"
        )
    _check_run_memory(config, device)
    return device


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
    device = _check_train_args(config, device, progress, log)
    rank, world = _dist_info()
    torch.manual_seed(config.seed)  # same initial weights in every process
    model: nn.Module = SegmentationModel(
        config.head,
        width=config.width,
        mid_channels=config.mid_channels,
        embedding_channels=16 if config.ccl else 0,
        dropout=config.dropout,
    ).to(device)
    ccl = None
    if config.ccl:
        from .losses import CategoryConsistentLoss

        ccl = CategoryConsistentLoss(num_classes=NUM_CLASSES)
    if world > 1:
        if config.sync_bn:
            model = convert_sync_batchnorm(model, device)
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    # Different dropout masks per process; the data split already differs.
    torch.manual_seed(config.seed * 1000 + rank + 1)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    batch, steps = config.batch_size, config.steps
    local = batch // world
    data = BeaconShapes(steps * batch, seed=config.seed, size=config.size)
    model.train()
    bar = tqdm(
        range(steps),
        desc=config.head + ("+ccl" if config.ccl else ""),
        disable=not progress or rank != 0,
    )
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = poly_lr(config.lr, step, steps)
        # Global batch `step` = samples [step*batch, (step+1)*batch); this rank's slice:
        first = step * batch + rank * local
        images, labels = data.batch(range(first, first + local))
        images, labels = images.to(device), labels.to(device)
        out = model(images, return_all=True)
        loss, parts = segmentation_loss(out, labels, ccl, config.ccl_weight)
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


def checkpoint_name(head: str, ccl: bool = False, ccl_weight: float = 1.0, seed: int = 0) -> str:
    """The file stem ``--all`` writes: ``HEAD[_ccl[WEIGHT]][_seed<k>]``.

    The CCL weight appears only when it is not 1 (``rcca2_ccl0.1``), the seed
    only when it is not 0 (``rcca2_seed1``): the shipped names are
    ``checkpoint_name(head, ccl)`` for seed 0.
    """
    check_choice("head", head, HEADS)
    check_bool("ccl", ccl)
    ccl_weight = check_float("ccl_weight", ccl_weight, minimum=0.0, exclusive_minimum=True)
    seed = check_int("seed", seed, minimum=0)
    name = head
    if ccl:
        name += "_ccl" + ("" if ccl_weight == 1.0 else f"{ccl_weight:g}")
    return name + (f"_seed{seed}" if seed else "")


def loss_curve(log: Sequence[dict[str, float]], every: int = LOSS_CURVE_EVERY) -> dict[str, Any]:
    """The learning curve of a run, small enough for a checkpoint's metadata.

    ``log`` is what :func:`train` appends (one dict of losses per step).
    Returns ``{"every": every, "step": [...], "loss": [...], ...}``: for each
    window of ``every`` consecutive steps (the last one may be shorter) the
    number of steps done at its end and the mean of each logged loss over it
    (``loss``, ``ce`` and, with the CCL, ``ccl``).  Under ``--ddp`` these are
    rank 0's losses on its slice of each batch.
    """
    if isinstance(log, (str, bytes)) or not isinstance(log, Sequence):
        raise TypeError(f"log must be a list of dicts, got {type(log).__name__}")
    if not all(isinstance(entry, dict) for entry in log):
        raise TypeError("log must be a list of dicts (what train(log=...) appends)")
    every = check_int("every", every, minimum=1)
    keys = [k for k in ("loss", "ce", "ccl") if log and all(k in entry for entry in log)]
    curve: dict[str, Any] = {"every": every, "step": []}
    curve.update({k: [] for k in keys})
    for start in range(0, len(log), every):
        window = log[start : start + every]
        curve["step"].append(start + len(window))
        for k in keys:
            curve[k].append(round(sum(float(e[k]) for e in window) / len(window), 6))
    return curve


def __getattr__(name: str) -> Any:
    if name in _CLI_NAMES:
        from . import train_cli

        return getattr(train_cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    from ccnet_edu.train_cli import main as _main

    _main()
