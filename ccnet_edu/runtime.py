"""What the machine offers a chapter: its device, exact float32 on CUDA, the compiled operator.

Every chapter starts from these three functions, so that it gives the same checked numbers
on a CPU and on a GPU, and runs to its end on a machine without a C++ compiler:

* :func:`pick_device` returns ``"cuda"`` when PyTorch sees a GPU, else ``"cpu"``, and turns
  TF32 off for CUDA's matrix products and cuDNN's convolutions.  Both are allowed by default
  in cuDNN (and may be in cuBLAS): they round float32 operands to a 10-bit mantissa, which
  changes a float32 result in its third or fourth digit, so a checked float32 number (an
  evaluation, a convolution's output) would differ between the devices.  With TF32 off a
  float32 product on the GPU keeps float32's precision, and what a chapter prints to a few
  digits is the same on either device.  (Random inputs are a separate matter: a chapter
  draws them on the CPU, whose generator gives the same numbers on every machine, and moves
  them with ``.to(device)``.)
* :func:`describe` names the device a measurement ran on, for the cells that time, weigh or
  compile, so that a printed figure says which machine it belongs to.
* :func:`load_operator` builds and loads the fused criss-cross operator
  (:func:`ccnet_edu.ops.load`) and, where it cannot be built (no C++ compiler, say), prints
  one sentence saying so and returns an empty list instead of raising, so that the chapter
  goes on; the cells that need the operator check the list and say what they skipped
  (:data:`SKIPPED`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import torch

from ._checks import check_device

__all__ = ["SKIPPED", "describe", "load_operator", "pick_device", "try_build"]

T = TypeVar("T")

#: What a cell that needs compiled code prints where :func:`load_operator` (or
#: :func:`try_build`) could not build it.
SKIPPED = (
    "Skipped: this cell runs compiled C++ code (the criss-cross operator, or its kernels' CPU "
    "emulation), which could not be built on this machine (see the sentence under the "
    "chapter's first cell)."
)


def pick_device() -> str:
    """``"cuda"`` when PyTorch sees a GPU, else ``"cpu"``; on CUDA, TF32 is turned off.

    Sets ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32``
    to ``False`` (process-wide; harmless without a GPU), so that float32 products and
    convolutions on the GPU are computed in float32, as on the CPU.
    """
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return "cuda" if torch.cuda.is_available() else "cpu"


def describe(device: torch.device | str) -> str:
    """The device a measurement ran on, in words: the GPU's name, or the CPU's model and threads."""
    device = check_device("device", device)
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    if device.type == "meta":
        return "the meta device (shapes only, nothing computed)"
    from .measure import cpu_model

    return (
        f"CPU {cpu_model()}, {os.cpu_count()} logical CPUs, "
        f"{torch.get_num_threads()} PyTorch thread(s)"
    )


def try_build(build: Callable[[], T], what: str) -> T | None:
    """``build()``, or ``None`` with one printed sentence when it raises a build error.

    Args:
        build: builds and loads compiled code, raising :class:`ccnet_edu.ops.BuildError`
            when it cannot (no C++ compiler, a failed compilation).
        what: what it builds, for the sentence ("the compiled criss-cross operator").

    Returns:
        What ``build`` returned, or ``None`` after printing why it failed (the first line of
        the error) and that the cells needing it will say they were skipped.
    """
    from .ops import BuildError

    try:
        return build()
    except BuildError as error:
        reason = (str(error).splitlines() or ["unknown reason"])[0]
        print(
            f"{what[0].upper()}{what[1:]} is not available on this machine ({reason}). Building "
            "it needs a C++ compiler (see the book's setup page); the cells that run it say that "
            "they were skipped, and every other cell runs as usual."
        )
        return None


def load_operator(cuda: bool | None = None) -> list:
    """:func:`ccnet_edu.ops.load`, or ``[]`` with one printed sentence when it cannot build.

    Args:
        cuda: as for :func:`ccnet_edu.ops.load` (``None``: also CUDA where a GPU is present).

    Returns:
        The loaded libraries' :class:`~ccnet_edu.ops.BuildInfo` list; empty when the build
        failed, in which case the reason (the first line of the
        :class:`~ccnet_edu.ops.BuildError`) has been printed.
    """
    from . import ops

    loaded = try_build(lambda: ops.load(cuda=cuda), "the compiled criss-cross operator")
    return [] if loaded is None else loaded
