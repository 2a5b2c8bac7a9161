"""Input validation shared by every module.

Bad input should fail at the door with a message that names the argument and
says what was expected, not deep inside an ``einsum`` with a shape error.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "check_feature_map",
    "check_same_device",
    "check_positive_pair",
]


def check_feature_map(
    name: str,
    x: object,
    *,
    channels: int | None = None,
    channels_from: str | None = None,
) -> torch.Tensor:
    """Check that ``x`` is a floating-point tensor of shape (B, C, H, W).

    ``channels`` (if given) is the expected C; ``channels_from`` names where
    that number comes from, for the error message (e.g. ``"in_channels"``).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"{name} must have 4 dimensions (B, C, H, W), got {x.dim()} "
            f"with shape {tuple(x.shape)}"
        )
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        origin = f" ({channels_from}={channels})" if channels_from else ""
        raise ValueError(
            f"{name} must have {channels} channels{origin}, got {x.shape[1]} "
            f"with shape {tuple(x.shape)}"
        )
    if min(x.shape[2], x.shape[3]) < 1:
        raise ValueError(f"{name} must have H, W >= 1, got shape {tuple(x.shape)}")
    return x


def check_same_device(**tensors: torch.Tensor) -> None:
    """Raise if the named tensors do not all live on one device."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all inputs must be on one device, got {listed}")


def check_positive_pair(name: str, value: int | Sequence[int]) -> tuple[int, int]:
    """Turn ``value`` (an int or a pair) into a pair of ints >= 1."""
    if isinstance(value, int):
        pair = (value, value)
    else:
        pair = tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return pair  # type: ignore[return-value]
