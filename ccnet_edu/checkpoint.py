"""Checkpoints: the weights of a :class:`~ccnet_edu.models.SegmentationModel`, safe to load.

A checkpoint is one ``torch.save`` file holding the model's config, its state
dict, the SHA-256 digest of that state dict (:func:`state_dict_digest`) and
metadata (the command, seed and metrics that made it).  It is read with
``weights_only=True`` and checked before any model is built
(:func:`load_checkpoint`).  The trained weights the book uses ship in
``ccnet_edu/checkpoints/`` (:data:`CHECKPOINT_DIR`, :func:`load_pretrained`).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._checks import check_str, check_writable
from .models import SegmentationModel, check_config

__all__ = [
    "CHECKPOINT_DIR",
    "state_dict_digest",
    "save_checkpoint",
    "load_checkpoint",
    "load_pretrained",
    "pretrained_names",
    "add_digest",
]

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
_FORMAT = "ccnet_edu.checkpoint/1"


def _state_dict_of(source: object) -> Mapping[str, torch.Tensor]:
    if isinstance(source, nn.Module):
        return getattr(source, "module", source).state_dict()  # unwrap DistributedDataParallel
    if isinstance(source, Mapping):
        for key, value in source.items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"state dict entries must be str -> torch.Tensor, got {key!r} -> "
                    f"{type(value).__name__}"
                )
        return source
    raise TypeError(f"source must be an nn.Module or a state dict, got {type(source).__name__}")


def state_dict_digest(source: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of all parameters and buffers (names, dtypes, shapes, bytes).

    ``source`` is a module or its state dict; equal weights give an equal
    digest, and one flipped bit anywhere in the tensor data changes it.
    :func:`save_checkpoint` stores it, :func:`load_checkpoint` checks it.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(_state_dict_of(source).items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # the raw bytes, any dtype
    return h.hexdigest()


def _write_payload(path: Path, payload: dict[str, Any]) -> Path:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    # Refuse metadata that a safe (weights_only) load could not read back.
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except Exception as err:
        raise TypeError(
            f"meta must hold only plain Python values (str, int, float, list, dict): {err}"
        ) from err
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())  # one write: no half-written file on the usual errors
    return path


def save_checkpoint(path: str | Path, model: SegmentationModel, meta: dict[str, Any]) -> Path:
    """Save weights + config + their SHA-256 digest + ``meta`` (command, seed, metrics, ...).

    ``model`` may be wrapped in DistributedDataParallel.  ``meta`` must hold
    plain Python values only (it is read back with ``weights_only=True``).
    """
    path = check_writable("path", path)
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    if not isinstance(model, SegmentationModel):
        raise TypeError(f"model must be a SegmentationModel, got {type(model).__name__}")
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format": _FORMAT,
        "config": dict(model.config),
        "state_dict": state_dict,
        "state_dict_digest": state_dict_digest(state_dict),
        "meta": dict(meta),
    }
    return _write_payload(path, payload)


def _read_payload(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged zip/pickle
        raise ValueError(
            f"checkpoint {path} is corrupt or not a torch file ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"checkpoint {path} is not a ccnet_edu checkpoint (format {_FORMAT!r})")
    state_dict = payload.get("state_dict")
    if not isinstance(state_dict, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise ValueError(f"checkpoint {path}: 'state_dict' is not a dict of named tensors")
    return payload


def _map_location(map_location: object) -> torch.device:
    if not isinstance(map_location, (str, torch.device)):
        raise TypeError(
            f"map_location must be a str or torch.device, got {type(map_location).__name__}"
        )
    try:
        return torch.device(map_location)
    except RuntimeError as err:
        raise ValueError(f"map_location {map_location!r} is not a device: {err}") from None


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> SegmentationModel:
    """Load a checkpoint written by :func:`save_checkpoint`; metadata in ``model.meta``.

    Nothing in the file is trusted before it is checked, in this order: the
    file is a ``weights_only`` torch file of this format; its weights match
    the SHA-256 digest stored at save time; its config passes
    :func:`check_config`; the model that config describes, built on the
    ``meta`` device (no memory), has exactly the shapes of the stored weights.
    Only then is the real model built, so a damaged config cannot ask for
    more memory than the weights in the file occupy.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable ccnet_edu checkpoint (truncated, corrupt,
            another format), its weights do not match their digest, it has no digest
            (saved before digests were stored), or its config is invalid or does not
            match its weights.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    device = _map_location(map_location)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    payload = _read_payload(path)
    stored = payload.get("state_dict_digest")
    if stored is None:
        raise ValueError(
            f"checkpoint {path} predates weight digests (it has no 'state_dict_digest'); "
            "if you trust the file, add one with ccnet_edu.checkpoint.add_digest(path)"
        )
    computed = state_dict_digest(payload["state_dict"])
    if stored != computed:
        raise ValueError(
            f"checkpoint {path} is damaged: its weights do not match the digest stored at "
            f"save time (stored {str(stored)[:16]}..., computed {computed[:16]}...)"
        )
    try:
        config = check_config(payload.get("config"))
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {path} has an invalid config: {err}") from None
    with torch.device("meta"):  # shapes only: a huge config allocates nothing
        skeleton = SegmentationModel(**config)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in payload["state_dict"].items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))[:3]
        extra = sorted(set(found) - set(expected))[:3]
        shape = [k for k in expected if k in found and expected[k] != found[k]][:3]
        raise ValueError(
            f"checkpoint {path} does not match its config {config}: missing {missing}, "
            f"unexpected {extra}, other shapes {shape}"
        )
    model = SegmentationModel(**config)
    model.load_state_dict(payload["state_dict"])
    meta = payload.get("meta", {})
    model.meta = meta if isinstance(meta, dict) else {}
    model.eval()
    return model.to(device)


def add_digest(path: str | Path, out: str | Path | None = None) -> Path:
    """Give a checkpoint saved before digests were stored its ``state_dict_digest``.

    Reads ``path`` (``weights_only``), adds the digest of the weights it holds
    and writes the payload back (to ``out`` if given); the weights, config and
    meta are not changed.  Only do this to a file you trust: the digest
    vouches for the weights as they are now.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    target = check_writable("out", path if out is None else out)
    payload = _read_payload(path)
    payload["state_dict_digest"] = state_dict_digest(payload["state_dict"])
    return _write_payload(target, payload)


def pretrained_names() -> list[str]:
    """Names of the checkpoints shipped in ``ccnet_edu/checkpoints``."""
    return sorted(p.stem for p in CHECKPOINT_DIR.glob("*.pt"))


def load_pretrained(name: str, map_location: str | torch.device = "cpu") -> SegmentationModel:
    """Load the shipped checkpoint ``name`` (e.g. ``"rcca2"``), in eval mode.

    ``name`` must be one of :func:`pretrained_names` (nothing outside the
    package's checkpoints folder is read).  The metadata (``model.meta``)
    records the exact command and seed that produced it and its validation
    metrics.
    """
    check_str("name", name)
    names = pretrained_names()
    if name not in names:
        raise ValueError(
            f"name must be one of the shipped checkpoints {names or '(none)'}, got {name!r}. "
            f"They are made by `python -m ccnet_edu.train --all --seeds 0 1 "
            f"--overwrite-shipped`; one model by "
            f"`python -m ccnet_edu.train --head HEAD --save PATH`."
        )
    return load_checkpoint(CHECKPOINT_DIR / f"{name}.pt", map_location=map_location)
