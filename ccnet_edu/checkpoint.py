"""Checkpoints: the weights of a :class:`~ccnet_edu.models.SegmentationModel`, safe to load.

A checkpoint is one ``torch.save`` file holding the model's config, its state
dict, metadata (the command, seed and metrics that made it), the SHA-256 digest
of the state dict (:func:`state_dict_digest`) and one SHA-256 digest of all of
it (format, config, meta and weights: :func:`payload_digest`), so that every bit
a load restores is vouched for.  It is written atomically (a failed save leaves
the old file whole) and read with ``weights_only=True``; any damage is a
``ValueError`` naming the file, found before any model is built
(:func:`load_checkpoint`).  The trained weights the book uses ship in
``ccnet_edu/checkpoints/`` (:data:`CHECKPOINT_DIR`, :func:`load_pretrained`).

A file of an earlier format (its digest covered the weights only) is upgraded,
once, by ``python -m ccnet_edu.checkpoint redigest PATH...`` (:func:`add_digest`).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._checks import OneLineArgumentParser, check_str, check_writable
from ._io import atomic_write_bytes
from .models import SegmentationModel, check_config

__all__ = [
    "CHECKPOINT_DIR",
    "state_dict_digest",
    "payload_digest",
    "save_checkpoint",
    "load_checkpoint",
    "load_pretrained",
    "pretrained_names",
    "add_digest",
]

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
_FORMAT = "ccnet_edu.checkpoint/2"
# The format before the whole payload was digested (the weights only): upgraded by add_digest.
_FORMAT_WEIGHTS_ONLY = "ccnet_edu.checkpoint/1"
_REDIGEST = "python -m ccnet_edu.checkpoint redigest"


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


def _canonical(value: object, out: bytearray) -> None:
    """Append an unambiguous byte encoding of a plain value (what ``meta``/``config`` hold).

    Each value carries its type, so ``1``, ``1.0``, ``True`` and ``"1"`` differ, and
    tuples differ from lists; a dict is encoded with its entries sorted by encoded key.
    """
    if value is None:
        out += b"N"
    elif isinstance(value, bool):
        out += b"T" if value else b"F"
    elif isinstance(value, int):
        text = str(value).encode()
        out += b"i" + struct.pack("<Q", len(text)) + text
    elif isinstance(value, float):
        out += b"f" + struct.pack("<d", value)
    elif isinstance(value, str):
        text = value.encode("utf-8", "surrogatepass")
        out += b"s" + struct.pack("<Q", len(text)) + text
    elif isinstance(value, (list, tuple)):
        out += (b"l" if isinstance(value, list) else b"t") + struct.pack("<Q", len(value))
        for item in value:
            _canonical(item, out)
    elif isinstance(value, dict):
        entries = []
        for k, v in value.items():
            encoded_key, encoded_value = bytearray(), bytearray()
            _canonical(k, encoded_key)
            _canonical(v, encoded_value)
            entries.append((bytes(encoded_key), bytes(encoded_value)))
        out += b"d" + struct.pack("<Q", len(entries))
        for k, v in sorted(entries):
            out += k + v
    else:
        raise TypeError(
            f"meta and config must hold only plain Python values (None, bool, int, float, str, "
            f"list, tuple, dict), got {type(value).__name__}"
        )


def payload_digest(payload: Mapping[str, Any]) -> str:
    """SHA-256 of everything a checkpoint restores: format, config, meta and weights.

    ``payload`` is what :func:`save_checkpoint` writes (its ``"format"``,
    ``"config"``, ``"meta"`` and ``"state_dict"``); the weights enter through
    :func:`state_dict_digest`.  One flipped bit in any of them changes it.
    """
    if not isinstance(payload, Mapping):
        raise TypeError(f"payload must be a dict, got {type(payload).__name__}")
    missing = [k for k in ("format", "config", "meta", "state_dict") if k not in payload]
    if missing:
        raise ValueError(f"payload must have format, config, meta and state_dict; no {missing}")
    encoded = bytearray()
    for part in ("format", "config", "meta"):
        _canonical(part, encoded)
        _canonical(payload[part], encoded)
    _canonical("state_dict", encoded)
    _canonical(state_dict_digest(payload["state_dict"]), encoded)
    return hashlib.sha256(bytes(encoded)).hexdigest()


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
    atomic_write_bytes(path, buffer.getvalue())  # a failure leaves the old file whole
    return path


def _seal(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` in the current format with its weight digest and its whole digest."""
    sealed = {k: v for k, v in payload.items() if k not in ("digest", "state_dict_digest")}
    sealed["format"] = _FORMAT
    sealed["state_dict_digest"] = state_dict_digest(sealed["state_dict"])
    sealed["digest"] = payload_digest(sealed)
    return sealed


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
    meta = dict(meta)
    _canonical(meta, bytearray())  # TypeError before anything is written
    payload = {"config": dict(model.config), "state_dict": state_dict, "meta": meta}
    return _write_payload(path, _seal(payload))


def _checkpoint_path(path: object, name: str = "path") -> Path:
    """``path`` as a ``Path`` to an existing regular file (checked without opening it)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}")
    if os.fspath(path) in ("", b""):
        raise ValueError(f"{name} must not be empty (it would name the current folder)")
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except OSError as err:
        raise ValueError(f"checkpoint {path} cannot be read: {err.strerror or err}") from None
    if stat.S_ISDIR(mode):
        raise ValueError(f"{name} {str(path)!r} is a directory, not a checkpoint file")
    if not stat.S_ISREG(mode):
        raise ValueError(
            f"{name} {str(path)!r} is not a regular file (a FIFO, socket or device): a "
            "checkpoint is read from a file"
        )
    return path


def _read_payload(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged zip/pickle
        raise ValueError(
            f"checkpoint {path} is corrupt or not a torch file ({type(err).__name__}: "
            f"{str(err)[:200]})"
        ) from None
    formats = (_FORMAT, _FORMAT_WEIGHTS_ONLY)
    if not isinstance(payload, dict) or payload.get("format") not in formats:
        raise ValueError(f"checkpoint {path} is not a ccnet_edu checkpoint (format {_FORMAT!r})")
    state_dict = payload.get("state_dict")
    if not isinstance(state_dict, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise ValueError(f"checkpoint {path}: 'state_dict' is not a dict of named tensors")
    return payload


def _weights_digest(path: Path, payload: Mapping[str, Any]) -> str:
    """:func:`state_dict_digest` of a loaded payload; a tensor torch cannot read is damage."""
    try:
        return state_dict_digest(payload["state_dict"])
    except Exception as err:  # strides or sizes a flipped bit made impossible
        raise ValueError(
            f"checkpoint {path} is damaged: its weights cannot be read ({type(err).__name__}: "
            f"{str(err)[:200]})"
        ) from None


def _verify(path: Path, payload: dict[str, Any]) -> None:
    """The stored digests match what the file holds (raises ``ValueError`` naming ``path``)."""
    if payload["format"] == _FORMAT_WEIGHTS_ONLY:
        raise ValueError(
            f"checkpoint {path} has the format {_FORMAT_WEIGHTS_ONLY!r}, whose digest covers the "
            f"weights only (not the config or meta); if you trust the file, upgrade it with "
            f"`{_REDIGEST} {path}` (ccnet_edu.checkpoint.add_digest)"
        )
    stored, whole = payload.get("state_dict_digest"), payload.get("digest")
    if not isinstance(stored, str) or not isinstance(whole, str):
        raise ValueError(f"checkpoint {path} is damaged: its digests are missing or not strings")
    computed = _weights_digest(path, payload)
    if stored != computed:
        raise ValueError(
            f"checkpoint {path} is damaged: its weights do not match the digest stored at "
            f"save time (stored {stored[:16]}..., computed {computed[:16]}...)"
        )
    try:
        everything = payload_digest(payload)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {path} is damaged: {err}") from None
    if whole != everything:
        raise ValueError(
            f"checkpoint {path} is damaged: its config or meta do not match the digest stored "
            f"at save time (stored {whole[:16]}..., computed {everything[:16]}...)"
        )


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
    path is a regular file; the file is a ``weights_only`` torch file of this
    format; its weights match their SHA-256 digest and its format, config,
    meta and weights together match the digest of the whole (both stored at
    save time); its config passes :func:`check_config`; the model that config
    describes, built on the ``meta`` device (no memory), has exactly the
    shapes of the stored weights.  Only then is the real model built, so a
    damaged config cannot ask for more memory than the weights in the file
    occupy.

    Raises:
        TypeError: ``path`` or ``map_location`` has the wrong type.
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is empty, a directory or not a regular file; the file is not
            a readable ccnet_edu checkpoint (truncated, corrupt, another format), any part
            of it does not match its digest, it has the earlier weights-only format (see
            :func:`add_digest`), or its config is invalid or does not match its weights.
            Every such message names the file.
    """
    path = _checkpoint_path(path)
    device = _map_location(map_location)
    payload = _read_payload(path)
    _verify(path, payload)
    try:
        config = check_config(payload.get("config"))
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {path} has an invalid config: {err}") from None
    try:
        with torch.device("meta"):  # shapes only: a huge config allocates nothing
            skeleton = SegmentationModel(**config)
    except (RuntimeError, OverflowError, MemoryError) as err:  # sizes beyond any tensor
        raise ValueError(
            f"checkpoint {path} has a config {config} that no model can have "
            f"({type(err).__name__}: {str(err)[:200]})"
        ) from None
    except ValueError as err:  # a size over a module's own bound (e.g. MAX_CHANNELS)
        raise ValueError(
            f"checkpoint {path} does not match its config {config}: no model of that config "
            f"can be built ({str(err)[:200]})"
        ) from None
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
    meta = payload["meta"]
    if not isinstance(meta, dict):
        raise ValueError(f"checkpoint {path}: 'meta' is not a dict, got {type(meta).__name__}")
    model = SegmentationModel(**config)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:  # a dtype the parameters cannot take
        raise ValueError(f"checkpoint {path}: its weights do not fit the model: {err}") from None
    model.meta = meta
    model.eval()
    return model.to(device)


def add_digest(path: str | Path, out: str | Path | None = None) -> Path:
    """Upgrade a checkpoint to the current format: a digest of everything it restores.

    Reads ``path`` (``weights_only``), checks the weight digest it already
    holds (a file whose weights do not match it is refused as damaged), adds
    the digest of its format, config, meta and weights together and writes it
    back atomically (to ``out`` if given); the weights, config and meta are
    not changed.  Only do this to a file you trust: the new digest vouches
    for the config and meta as they are now.  A file already in the current
    format is verified and written back unchanged in content.
    ``python -m ccnet_edu.checkpoint redigest PATH...`` runs this on each path.
    """
    path = _checkpoint_path(path)
    target = check_writable("out", path if out is None else out)
    payload = _read_payload(path)
    stored = payload.get("state_dict_digest")
    if payload["format"] == _FORMAT:
        _verify(path, payload)
    elif stored is not None and stored != _weights_digest(path, payload):
        raise ValueError(
            f"checkpoint {path} is damaged: its weights do not match the digest stored at "
            "save time; it is not upgraded"
        )
    if not isinstance(payload.get("config"), dict) or not isinstance(payload.get("meta"), dict):
        raise ValueError(f"checkpoint {path}: 'config' and 'meta' must be dicts")
    try:
        sealed = _seal(payload)
    except TypeError as err:
        raise ValueError(f"checkpoint {path}: {err}") from None
    return _write_payload(target, sealed)


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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ccnet_edu.checkpoint redigest PATH...``: :func:`add_digest` on each file.

    Every path is checked (a regular, readable and writable checkpoint file)
    before any is rewritten; a usage error is one line on stderr, exit code 2.
    """
    parser = OneLineArgumentParser(
        prog="python -m ccnet_edu.checkpoint",
        description="Upgrade checkpoints to the current format (a digest of everything).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    redigest = sub.add_parser("redigest", help="verify and re-digest checkpoints in place")
    redigest.add_argument("paths", nargs="+", metavar="PATH")  # str: Path("") would be "."
    args = parser.parse_args(argv)
    for path in args.paths:
        try:
            _checkpoint_path(path, "PATH")
            check_writable("PATH", path)
        except (TypeError, ValueError, FileNotFoundError) as err:
            parser.error(str(err))
    for path in args.paths:
        try:
            add_digest(path)
        except ValueError as err:
            print(f"python -m ccnet_edu.checkpoint: error: {err}", file=sys.stderr)
            return 1
        print(f"re-digested {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
