"""Train and evaluate the heads of :mod:`ccnet_edu.models` on the beacon-shapes task.

Single process (CPU or GPU)::

    python -m ccnet_edu.train --head rcca2 --steps 500 --save rcca2.pt
    python -m ccnet_edu.train --all --seeds 0 1 2      # every shipped model, 3 seeds, ./checkpoints
    python -m ccnet_edu.train --all --names rcca2_ccl --ccl-weight 0.1   # -> rcca2_ccl0.1.pt

``--all`` writes ``NAME.pt`` for seed 0 and ``NAME_seed<k>.pt`` for seed k
into ``--out-dir`` (default ``./checkpoints``); writing into the package's
own ``ccnet_edu/checkpoints`` (the shipped files, see
:data:`~ccnet_edu.train.CHECKPOINT_COMMAND`) needs ``--overwrite-shipped``.  Every numeric
option is checked when the command line is read (a bad value is a usage
error, exit code 2, before any work), and so is every output path.

Several processes with DistributedDataParallel (gloo on CPU, NCCL on GPU)::

    torchrun --standalone --nproc_per_node=2 -m ccnet_edu.train --ddp --head rcca2

In a distributed run every process takes its own slice of each global batch,
DDP averages the gradients, and the batch norms are synchronised (torch's
``SyncBatchNorm`` on CUDA; on the CPU, where torch's SyncBatchNorm does not
run, :class:`~ccnet_edu.sync_batchnorm.AllReduceBatchNorm2d` does the same with differentiable
all-reduces over gloo).

Everything is seeded: the samples are a function of ``(seed, index)``
(:mod:`ccnet_edu.data`; their noise bitwise so per CPU kernel family), the
initial weights of ``--seed``, so one command gives one result (on one
machine and one torch version).

This module is the command line; the training loop, the loss and the
evaluation are :mod:`ccnet_edu.train`, which runs :func:`main` when invoked
with ``python -m``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

import torch
import torch.distributed as dist

from ._checks import (
    MAX_SEED,
    MAX_THREADS,
    OneLineArgumentParser,
    cli_device,
    cli_float,
    cli_int,
    cli_writable,
)
from ._io import atomic_write_text
from .checkpoint import CHECKPOINT_DIR, save_checkpoint, state_dict_digest
from .models import SegmentationModel
from .train import (
    SHIPPED,
    TrainConfig,
    _check_run_memory,
    _dist_info,
    checkpoint_name,
    evaluate,
    loss_curve,
    train,
)

__all__ = ["main"]


def _run_one(
    config: TrainConfig,
    device: torch.device,
    save: Path | None,
    command: str,
    *,
    progress: bool,
    digest_dir: Path | None,
) -> dict[str, Any]:
    """Train ``config``, evaluate it, write its digest and its checkpoint (rank 0) if asked."""
    rank, world = _dist_info()
    log: list[dict[str, float]] = []
    start = time.perf_counter()
    model = train(config, device=device, progress=progress, log=log)
    seconds = time.perf_counter() - start
    name = checkpoint_name(config.head, config.ccl, config.ccl_weight)
    result: dict[str, Any] = {}
    if rank == 0 and config.val_size > 0:
        result = evaluate(
            model,
            seed=config.val_seed,
            length=config.val_size,
            size=config.size,
            device=device,
            progress=progress,
        )
        print(
            f"{name:>10} seed {config.seed}: "
            f"mIoU {result['miou']:.3f}  pixel acc {result['pixel_acc']:.3f}  "
            f"far-shape acc {result['far_acc']:.3f}  ({seconds:.0f} s)",
            flush=True,
        )
    if digest_dir is not None:
        digest = state_dict_digest(model)
        digest_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(digest_dir / f"rank{rank}.txt", digest + "\n")
    if save is not None and rank == 0:
        meta = {
            "command": command,
            "seed": config.seed,
            "config": asdict(config),
            "metrics": result,
            "world_size": world,
            "train_seconds": round(seconds, 3),
            "loss_curve": loss_curve(log),
            "torch": str(torch.__version__),
        }
        # Back to plain BatchNorm2d names/types: the state dict is the same either way.
        plain = SegmentationModel(**model.config)
        plain.load_state_dict(model.state_dict())
        save_checkpoint(save, plain, meta)
        print(f"saved {save} ({save.stat().st_size / 1024:.0f} KiB)", flush=True)
    return result


def _shipped_names(text: str) -> list[str]:
    """argparse type of ``--names``: comma-separated names of :data:`SHIPPED`."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SHIPPED]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated names from {','.join(SHIPPED)}, got {text!r}"
        )
    return names


_DEFAULT_OUT_DIR = Path("checkpoints")


def _add_config_options(p: argparse.ArgumentParser) -> None:
    """One option per :class:`TrainConfig` field, typed and bounded by the field's rule.

    ``--snake-case`` of the field name; a ``bool`` field that defaults to
    ``True`` becomes ``--no-NAME``.  An option not given stays out of the
    namespace (``argparse.SUPPRESS``), so :func:`_config_options` sees what
    the command line set and :class:`TrainConfig` supplies every default.
    """
    group = p.add_argument_group(
        "hyper-parameters of a run (TrainConfig)",
        "--head and --ccl do not go with --all, which trains the shipped models (see --names)",
    )
    kinds = get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        rule, kind, flag = f.metadata, kinds[f.name], "--" + f.name.replace("_", "-")
        if not rule["cli"]:
            continue
        if kind is bool:
            if f.default:
                group.add_argument(
                    "--no-" + flag[2:],
                    dest=f.name,
                    action="store_false",
                    default=argparse.SUPPRESS,
                    help="do not " + rule["help"],
                )
            else:
                group.add_argument(
                    flag, action="store_true", default=argparse.SUPPRESS, help=rule["help"]
                )
            continue
        if kind is str:
            typed: dict[str, Any] = {"choices": rule["choices"]}
        elif kind is int:
            typed = {
                "type": cli_int(rule.get("minimum"), rule.get("maximum"), rule.get("multiple_of"))
            }
        else:
            typed = {
                "type": cli_float(
                    rule.get("minimum"), rule.get("maximum"), rule.get("exclusive_minimum", False)
                )
            }
        group.add_argument(
            flag,
            **typed,
            default=argparse.SUPPRESS,
            help=f"{rule['help']} (default {f.default:g})"
            if kind is float
            else f"{rule['help']} (default {f.default})",
        )


def _config_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`TrainConfig` fields the command line set (the others are not in ``args``)."""
    return {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}


def build_parser() -> argparse.ArgumentParser:
    """The command line: the :class:`TrainConfig` options, then what to run and where to write."""
    p = OneLineArgumentParser(prog="python -m ccnet_edu.train", description=__doc__.split("\n")[0])
    _add_config_options(p)
    p.add_argument(
        "--all",
        action="store_true",
        help="train every shipped model (or --names) and write OUT_DIR/NAME*.pt",
    )
    p.add_argument(
        "--names",
        type=_shipped_names,
        default=None,
        help=f"with --all: only these shipped models, comma-separated (from {','.join(SHIPPED)})",
    )
    p.add_argument(
        "--seeds",
        type=cli_int(0, MAX_SEED),
        nargs="+",
        default=None,
        help=f"with --all: train every model for each of these seeds (0 to {MAX_SEED})",
    )
    p.add_argument("--save", type=Path, default=None, help="checkpoint path (not with --all)")
    p.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help=f"with --all: where to write NAME[_seed<S>].pt (default: ./{_DEFAULT_OUT_DIR})",
    )
    p.add_argument(
        "--overwrite-shipped",
        action="store_true",
        help=f"allow writing into the package's shipped checkpoints ({CHECKPOINT_DIR}); "
        "with --all and no --out-dir, write there",
    )
    p.add_argument(
        "--device", type=cli_device(auto=True), default="auto", help="auto, cpu, cuda, cuda:1, ..."
    )
    p.add_argument(
        "--threads",
        type=cli_int(0, MAX_THREADS),
        default=0,
        help=f"torch threads (0: cores / processes; at most {MAX_THREADS})",
    )
    p.add_argument("--ddp", action="store_true", help="run under torchrun with DDP")
    p.add_argument(
        "--digest-dir",
        type=Path,
        default=None,
        help="write each rank's final state-dict SHA-256 to DIR/rank<r>.txt",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _is_shipped_dir(path: Path) -> bool:
    return path.absolute().resolve() == CHECKPOINT_DIR.resolve()


def _check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> list[Path]:
    """Everything the parser cannot check alone; returns the checkpoint paths to write."""
    given = _config_options(args)
    config = TrainConfig(**given)  # every value was checked by its option's type
    if args.all:
        for option, set_here in (
            ("--head", "head" in given),
            ("--ccl", "ccl" in given),
            ("--save", args.save is not None),
        ):
            if set_here:
                p.error(f"{option} does not go with --all (use --names to pick models)")
        seeds = args.seeds if args.seeds is not None else [config.seed]
        if len(set(seeds)) != len(seeds):
            p.error(f"--seeds must not repeat a seed, got {seeds}")
        if (
            args.overwrite_shipped
            and args.out_dir is not None
            and not _is_shipped_dir(args.out_dir)
        ):
            p.error(
                f"--overwrite-shipped writes into {CHECKPOINT_DIR}; it does not go with "
                f"--out-dir {args.out_dir}"
            )
        out_dir = args.out_dir or (CHECKPOINT_DIR if args.overwrite_shipped else _DEFAULT_OUT_DIR)
        if _is_shipped_dir(out_dir) and not args.overwrite_shipped:
            p.error(
                f"--out-dir {out_dir} is the package's shipped checkpoints folder; add "
                "--overwrite-shipped to replace them"
            )
        cli_writable(p, "--out-dir", out_dir, directory=True)
        names = args.names or list(SHIPPED)
        paths = []
        for seed in seeds:
            for name in names:
                head, ccl = SHIPPED[name]
                paths.append(out_dir / f"{checkpoint_name(head, ccl, config.ccl_weight, seed)}.pt")
    else:
        for option, set_here in (
            ("--names", args.names is not None),
            ("--seeds", args.seeds is not None),
            ("--out-dir", args.out_dir is not None),
        ):
            if set_here:
                p.error(f"{option} goes only with --all")
        paths = [args.save] if args.save is not None else []
        if args.save is not None:
            if _is_shipped_dir(args.save.parent) and not args.overwrite_shipped:
                p.error(
                    f"--save {args.save} is in the package's shipped checkpoints folder; "
                    "add --overwrite-shipped to replace a shipped file"
                )
            cli_writable(p, "--save", args.save)
    cli_writable(p, "--digest-dir", args.digest_dir, directory=True)
    if "sync_bn" in given and not args.ddp:
        p.error("--no-sync-bn goes only with --ddp")
    if (
        args.device != "auto"
        and torch.device(args.device).type == "cuda"
        and (not torch.cuda.is_available())
    ):
        p.error(f"--device {args.device}: CUDA is not available here")
    device = _resolve_device(args.device)
    heads = (
        {SHIPPED[name] for name in args.names or SHIPPED}
        if args.all
        else {(config.head, config.ccl)}
    )
    for head, ccl in sorted(heads):  # the memory a run needs, before anything is built
        try:
            _check_run_memory(replace(config, head=head, ccl=ccl), device, options=True)
        except ValueError as err:
            p.error(str(err))
    if args.ddp:
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            p.error(
                "--ddp needs the environment set by torchrun "
                "(torchrun --standalone --nproc_per_node=2 -m ccnet_edu.train --ddp)"
            )
        world = int(os.environ["WORLD_SIZE"])
        if config.batch_size % world:
            p.error(
                f"--batch-size {config.batch_size} must be a multiple of the number of "
                f"processes ({world})"
            )
    return paths


def _resolve_device(option: str) -> torch.device:
    """``--device``: ``auto`` is this process's GPU (``LOCAL_RANK``) if there is one."""
    if option == "auto":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(option)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The command line (see the module docstring); returns the validation metrics of each run.

    Every option is checked before any work: a bad value is a usage error
    (one line on stderr, exit code 2).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    paths = _check_arguments(parser, args)
    command = "python -m ccnet_edu.train " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    device = _resolve_device(args.device)
    if args.ddp:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    world = dist.get_world_size() if args.ddp else 1
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))

    config = TrainConfig(**_config_options(args))
    run = {"progress": not args.quiet, "digest_dir": args.digest_dir}
    results = []
    try:
        if args.all:
            seeds = args.seeds if args.seeds is not None else [config.seed]
            jobs = [(SHIPPED[name], seed) for seed in seeds for name in args.names or SHIPPED]
            for ((head, ccl), seed), path in zip(jobs, paths, strict=True):
                shipped = replace(config, head=head, ccl=ccl, seed=seed)
                results.append(_run_one(shipped, device, path, command, **run))
        else:
            results.append(_run_one(config, device, paths[0] if paths else None, command, **run))
    finally:
        if args.ddp:
            with contextlib.suppress(Exception):
                dist.barrier()
            dist.destroy_process_group()
    return results
