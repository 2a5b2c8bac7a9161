"""Input validation shared by every module, and the argument types of the command lines.

Bad input should fail at the door with a message that names the argument,
says what was expected and what came, before any allocation or work, not
deep inside an ``einsum`` with a shape error.  The rules, everywhere:

* a wrong *type* raises ``TypeError``, a wrong *value* raises ``ValueError``;
* booleans are not integers (``True`` channels is a bug, not a 1) and floats
  are not sizes (``width=1e6`` is refused, not truncated);
* floating-point arguments must be finite (NaN passes every ``<`` test and
  silently poisons a result).
"""

from __future__ import annotations

import argparse
import functools
import math
import numbers
import os
import re
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "check_feature_map",
    "check_tensor",
    "check_same_device",
    "check_qkv_agree",
    "check_device",
    "check_positive_pair",
    "check_int",
    "check_channels",
    "MAX_CHANNELS",
    "check_float",
    "check_probability",
    "check_bool",
    "check_str",
    "check_choice",
    "check_callable",
    "check_int_sequence",
    "check_index",
    "check_writable",
    "memory_limit",
    "check_memory",
    "MAX_SEED",
    "MAX_THREADS",
    "OneLineArgumentParser",
    "cli_int",
    "cli_float",
    "cli_device",
    "cli_writable",
]


def _describe(value: object) -> str:
    """``type value`` for an error message, the value shortened."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


# --------------------------------------------------------------------------- scalars


def check_int(
    name: str, value: object, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """An integer (``bool`` and ``float`` refused) in ``[minimum, maximum]``; returns ``int``.

    A symbolic size (``torch.SymInt``, what ``torch.export`` traces a tensor's shape as)
    passes unchecked: it was read off a tensor, not typed by a caller, and turning it
    into an ``int`` would fix the traced graph to one size.
    """
    if isinstance(value, torch.SymInt):
        return value  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_describe(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


#: The largest C', C, H and W, and the largest B, of the shapes ``(B, C', C, H, W)`` that
#: the roofline counts and the kernels' CPU emulation take (``check_cca_shape``): bounds
#: under which byte counts of a map stay far inside 64-bit integers and the slice
#: searches (16-channel steps) stay short.
MAX_CCA_DIM, MAX_CCA_BATCH = 2**16, 2**20


def check_cca_shape(
    shape: object, *, minimum: int = 1, max_batch: int = MAX_CCA_BATCH
) -> tuple[int, int, int, int, int]:
    """``shape = (B, C', C, H, W)``: five ints from ``minimum``, B at most ``max_batch``,
    the others at most ``MAX_CCA_DIM``; each named in the message (``shape's C``)."""
    if not isinstance(shape, (tuple, list)) or len(shape) != 5:
        raise TypeError(f"shape must be a (B, C', C, H, W) tuple of 5 ints, got {shape!r}")
    names = ("B", "C'", "C", "H", "W")
    return tuple(  # type: ignore[return-value]
        check_int(
            f"shape's {n}", d, minimum=minimum, maximum=max_batch if n == "B" else MAX_CCA_DIM
        )
        for n, d in zip(names, shape, strict=True)
    )


MAX_CHANNELS = 16384
"""The most channels (or classes) a module accepts: a 1x1 convolution from 16384 to 16384
channels already holds 1 GiB of float32 weights, and a block holds several."""


def check_channels(name: str, value: object, *, minimum: int = 1) -> int:
    """A channel or class count: an int in ``[minimum, MAX_CHANNELS]``, checked before a
    module allocates its weights (a typo such as ``10**9`` channels is refused, not
    allocated until the machine runs out of memory)."""
    value = check_int(name, value, minimum=minimum)
    if isinstance(value, torch.SymInt) or value <= MAX_CHANNELS:
        return value
    raise ValueError(
        f"{name} must be <= {MAX_CHANNELS}, got {value}: a 1x1 convolution of "
        f"{MAX_CHANNELS} to {MAX_CHANNELS} channels already holds 1 GiB of float32 weights"
    )


def check_float(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
) -> float:
    """A finite real number (int or float, not ``bool``) in range; returns ``float``.

    ``exclusive_minimum`` makes the lower bound strict (``> minimum``).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_describe(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None:
        if exclusive_minimum and value <= minimum:
            raise ValueError(f"{name} must be > {minimum:g}, got {value:g}")
        if not exclusive_minimum and value < minimum:
            raise ValueError(f"{name} must be >= {minimum:g}, got {value:g}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {value:g}")
    return value


def check_probability(name: str, value: object) -> float:
    """A probability: a finite real number in [0, 1]."""
    return check_float(name, value, minimum=0.0, maximum=1.0)


def check_bool(name: str, value: object) -> bool:
    """``True`` or ``False`` (``0``/``1``/``"yes"`` refused: a flag is not a number)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {_describe(value)}")
    return value


def check_str(name: str, value: object) -> str:
    """A ``str``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {_describe(value)}")
    return value


def check_choice(name: str, value: object, choices: Sequence[Any]) -> Any:
    """One of ``choices`` (compared with ``==``; a ``bool`` never matches an ``int`` choice)."""
    for choice in choices:
        if type(value) is type(choice) and value == choice:
            return value
    raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_callable(name: str, value: object) -> Callable[..., Any]:
    """Something that can be called."""
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {_describe(value)}")
    return value


def check_positive_pair(name: str, value: int | Sequence[int]) -> tuple[int, int]:
    """Turn ``value`` (an int or a pair) into a pair of ints >= 1."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list, torch.Size)):
        pair = tuple(value)
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {_describe(value)}")
    if len(pair) != 2 or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in pair
    ):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return int(pair[0]), int(pair[1])


def check_int_sequence(
    name: str, value: object, *, minimum: int | None = None, length: int | None = None
) -> tuple[int, ...]:
    """A non-empty list or tuple of ints (each checked like :func:`check_int`)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a list or tuple of ints, got {_describe(value)}")
    if len(value) == 0:
        raise ValueError(f"{name} must not be empty")
    if length is not None and len(value) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(value)}: {value!r}")
    return tuple(check_int(f"{name}[{k}]", v, minimum=minimum) for k, v in enumerate(value))


def check_index(name: str, value: object, grid: Sequence[int]) -> tuple[int, int]:
    """A pixel ``(i, j)`` of a grid of size ``grid = (H, W)``: ``0 <= i < H``, ``0 <= j < W``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (i, j) of ints, got {_describe(value)}")
    i = check_int(f"{name}[0]", value[0])
    j = check_int(f"{name}[1]", value[1])
    height, width = grid
    if not (0 <= i < height and 0 <= j < width):
        raise ValueError(f"{name} must lie in the grid of size ({height}, {width}), got {(i, j)}")
    return i, j


# --------------------------------------------------------------------------- tensors


def check_tensor(
    name: str,
    x: object,
    *,
    dim: int | Sequence[int] | None = None,
    kind: str | None = None,
    nonempty: bool = True,
    layout: str = "",
) -> torch.Tensor:
    """Check that ``x`` is a tensor with ``dim`` dimensions and a dtype of ``kind``.

    ``kind``: ``"float"`` (floating point), ``"int"`` (integer, not bool) or
    ``"bool"``; ``layout`` names the dimensions for the message, e.g.
    ``"(B, H, W)"``.  ``nonempty`` refuses a tensor with no elements.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {_describe(x)}")
    if dim is not None:
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        if x.dim() not in dims:
            expected = " or ".join(str(d) for d in dims)
            shown = f" {layout}" if layout else ""
            raise ValueError(
                f"{name} must have {expected} dimensions{shown}, got {x.dim()} "
                f"with shape {tuple(x.shape)}"
            )
    if kind == "float" and not x.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
    if kind == "int" and (x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool):
        raise TypeError(f"{name} must have an integer dtype, got {x.dtype}")
    if kind == "bool" and x.dtype != torch.bool:
        raise TypeError(f"{name} must have dtype torch.bool, got {x.dtype}")
    if nonempty and x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    return x


def check_feature_map(
    name: str,
    x: object,
    *,
    channels: int | None = None,
    channels_from: str | None = None,
) -> torch.Tensor:
    """Check that ``x`` is a non-empty floating-point tensor of shape (B, C, H, W).

    ``channels`` (if given) is the expected C; ``channels_from`` names where
    that number comes from, for the error message (e.g. ``"in_channels"``).
    """
    check_tensor(name, x, dim=4, kind="float", nonempty=False, layout="(B, C, H, W)")
    assert isinstance(x, torch.Tensor)
    if channels is not None and x.shape[1] != channels:
        origin = f" ({channels_from}={channels})" if channels_from else ""
        raise ValueError(
            f"{name} must have {channels} channels{origin}, got {x.shape[1]} "
            f"with shape {tuple(x.shape)}"
        )
    # Each size against 1 on its own: min() would compare the sizes with each other, and
    # under torch.export that ties a symbolic batch to a channel count of the same value.
    if any(size < 1 for size in x.shape):
        raise ValueError(f"{name} must have B, C, H, W >= 1 (not empty), got {tuple(x.shape)}")
    return x


def check_same_device(**tensors: torch.Tensor) -> None:
    """Raise if the named tensors do not all live on one device."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all inputs must be on one device, got {listed}")


def check_qkv_agree(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, layout: str, shared: str
) -> None:
    """Query, key and value of one attention fit together (each already a checked tensor).

    ``query`` and ``key`` have one shape (``layout`` names it in the message),
    ``value`` the dimensions 0, 2, 3 of ``query`` (``shared`` says what they
    are); all three share one dtype and one device.
    """
    if query.shape != key.shape:
        raise ValueError(
            f"query and key must have the same shape {layout}, got "
            f"query {tuple(query.shape)} and key {tuple(key.shape)}"
        )
    if value.shape[0] != query.shape[0] or value.shape[2:] != query.shape[2:]:
        raise ValueError(
            f"value must have the {shared} of query, got "
            f"value {tuple(value.shape)} and query {tuple(query.shape)}"
        )
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(
            f"query, key and value must share one dtype, got "
            f"{query.dtype}, {key.dtype} and {value.dtype}"
        )
    check_same_device(query=query, key=key, value=value)


def check_device(name: str, device: object, *, optional: bool = False) -> torch.device | None:
    """A device given as a ``str`` or ``torch.device`` (``None`` too when ``optional``)."""
    if device is None and optional:
        return None
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{name} must be a str or torch.device, got {_describe(device)}")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"{name} {device!r} is not a device ({err})") from None


# --------------------------------------------------------------------------- output paths


def check_writable(name: str, path: object, *, directory: bool = False) -> Path:
    """Check, before any work, that ``path`` can be written (nothing is created).

    A file path must not be a directory, nor an existing FIFO, socket or
    device (files are written atomically, :mod:`ccnet_edu._io`: to a
    temporary file in the same folder, then renamed over the target, so the
    target must be a regular file and its folder writable); a directory path
    must not be a file; the nearest existing ancestor must be a writable
    directory (missing folders in between are created later, when the output
    is written).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {_describe(path)}")
    if os.fspath(path) in ("", b""):
        raise ValueError(f"{name} must not be empty")
    path = Path(path)
    if path.exists():
        mode = path.stat().st_mode
        if directory and not path.is_dir():
            raise ValueError(f"{name} {str(path)!r} exists and is not a directory")
        if not directory and path.is_dir():
            raise ValueError(f"{name} {str(path)!r} is a directory, expected a file path")
        if not directory and not stat.S_ISREG(mode):
            raise ValueError(
                f"{name} {str(path)!r} is not a regular file (a device, FIFO or socket): "
                "outputs are written to a temporary file renamed over the target"
            )
        if not os.access(path, os.W_OK):
            raise ValueError(f"{name} {str(path)!r} is not writable")
        folder = path if directory else path.absolute().parent
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(
                f"{name} {str(path)!r} cannot be replaced: its folder {str(folder)!r} is "
                "read-only (outputs are written to a temporary file beside it)"
            )
        return path
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{name} {str(path)!r} cannot be created: {str(ancestor)!r} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {str(path)!r} cannot be created: {str(ancestor)!r} is read-only")
    return path


# --------------------------------------------------------------------------- memory

#: The largest seed a command line or config takes: ``torch.manual_seed`` takes seeds
#: below 2**64, and the data and the training loop derive seeds from it by multiplying by
#: at most about 2**20 and adding an index, which stays in range for seeds below 2**32.
MAX_SEED = 2**32 - 1


#: The most threads an option takes: far more than the cores of any machine this runs on,
#: and each thread reserves its own stack (``--threads 1e12`` must not reach the OS).
MAX_THREADS = 1024


@functools.cache
def _physical_memory() -> int | None:
    """Bytes of RAM this process may use: the machine's, or its cgroup's limit if lower."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        total = None
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text.isdigit():
            total = min(total or int(text), int(text))
    except OSError:
        pass
    return total


def memory_limit(device: object = "cpu") -> int | None:
    """Bytes one request may plan to use on ``device``; ``None`` where nothing is allocated.

    Half of this machine's RAM (or of its cgroup limit) on the CPU, leaving room for
    the rest of the process and for an estimate that is only an estimate; 90 % of the
    GPU's memory on CUDA; no limit on ``meta`` (shapes only).
    """
    device = check_device("device", device)
    assert device is not None
    if device.type == "meta":
        return None
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory * 0.9)
    total = _physical_memory()
    return None if total is None else total // 2


def check_memory(name: str, need: float, device: object = "cpu", *, hint: str = "") -> None:
    """Refuse a request whose estimated memory ``need`` (bytes) exceeds :func:`memory_limit`.

    ``name`` says what was asked (e.g. ``"batch_size 1000000 at size 96"``), ``hint``
    which arguments to lower.  Called before anything is allocated.
    """
    limit = memory_limit(device)
    if limit is None or need <= limit:
        return
    whence = (
        "half of this machine's RAM"
        if check_device("device", device).type != "cuda"  # type: ignore[union-attr]
        else "90% of the GPU's memory"
    )
    gib = need / 2**30
    amount = (
        "more memory than a tensor can address"
        if not math.isfinite(gib)
        else f"about {gib:,.1f} GiB"
        if gib < 1e6
        else f"about {gib:.2g} GiB"
    )
    raise ValueError(
        f"{name} needs {amount} (estimated before allocating), over the limit of "
        f"{limit / 2**30:,.1f} GiB ({whence})" + (f"; {hint}" if hint else "")
    )


# --------------------------------------------------------------------------- command lines


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr, exit code 2.

    The stock parser prints the whole usage block before the message; with a
    score of options that buries the one line that matters.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def cli_int(
    minimum: int | None = None, maximum: int | None = None, multiple_of: int | None = None
) -> Callable[[str], int]:
    """An argparse ``type``: an int in ``[minimum, maximum]``, a multiple of ``multiple_of``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {value}")
        if multiple_of is not None and value % multiple_of:
            raise argparse.ArgumentTypeError(f"must be a multiple of {multiple_of}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def cli_float(
    minimum: float | None = None, maximum: float | None = None, exclusive_minimum: bool = False
) -> Callable[[str], float]:
    """An argparse ``type``: a finite float in range (``exclusive_minimum``: ``> minimum``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
        if minimum is not None:
            if exclusive_minimum and value <= minimum:
                raise argparse.ArgumentTypeError(f"must be > {minimum:g}, got {text}")
            if not exclusive_minimum and value < minimum:
                raise argparse.ArgumentTypeError(f"must be >= {minimum:g}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum:g}, got {text}")
        return value

    parse.__name__ = "float"
    return parse


def cli_device(*, auto: bool = False) -> Callable[[str], str]:
    """An argparse ``type``: ``cpu``, ``cuda`` or ``cuda:N`` (and ``"auto"`` if ``auto``).

    Other device types torch knows (``meta``, ``mps``, ``xla``, ...) are refused: the
    command lines compute on real data, on the CPU or an NVIDIA GPU.
    """
    expected = "auto, cpu, cuda or cuda:N" if auto else "cpu, cuda or cuda:N"

    def parse(text: str) -> str:
        if (auto and text == "auto") or re.fullmatch(r"cpu|cuda(:[0-9]+)?", text):
            return text
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")

    parse.__name__ = "device"
    return parse


def cli_writable(
    parser: argparse.ArgumentParser, option: str, path: object, *, directory: bool = False
) -> None:
    """:func:`check_writable` for a command-line option: a usage error (exit 2) if not."""
    if path is None:
        return
    try:
        check_writable(option, path, directory=directory)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
