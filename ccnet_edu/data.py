"""A synthetic segmentation task that cannot be solved without long-range context.

Why a synthetic task?  Real benchmarks (Cityscapes, ADE20K) need a GPU and
hours.  To *see* what a context head buys, we want a task that trains on a
2-core CPU in minutes per model and on which a head without context
must fail on part of the image while a head with context can succeed.

The task ("beacon shapes"):

* the image is grey noise with a few grey **shapes** (squares and discs) on it;
  every shape looks the same whatever its class;
* somewhere in the image sits one small **beacon**, a square of saturated
  red, green or blue;
* every shape pixel takes the class of the beacon (1 = red, 2 = green,
  3 = blue); the beacon itself too; everything else is background (0).

Finding the shapes is local work; *naming* them needs the beacon, which is
usually far away.  The backbone of :mod:`ccnet_edu.models` (output stride 8)
has a theoretical receptive field of 35 pixels, so a feature cell more than
17 pixels from the beacon cannot see it, and a pixel's logits, upsampled from
up to two cells per axis, cannot draw on it beyond 28 pixels (less in most
directions, see :func:`ccnet_edu.analysis.propagation.logit_reach`): there a head
without context can only guess the class (one chance in three), while a head that gathers
context from the whole image (non-local, RCCA with R = 2, ISA, the global
branch of SA) can read the beacon.  RCCA with R = 1 sees only the row and
column of a pixel (widened by the receptive field of the backbone, and by the
bilinear upsampling of the logits, which mixes up to two cells per axis), so it
reads the beacon only for shapes that share such a row or column band with it.

Every sample is a function of ``(seed, index)``: the same dataset
object returns the same tensors in any order, in any process, which keeps
distributed training and evaluation reproducible.  Across machines the
labels are the same bit for bit, but the image's noise is not everywhere:
see :func:`make_sample`.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ._checks import check_float, check_int

__all__ = [
    "NUM_CLASSES",
    "CLASS_NAMES",
    "BEACON_COLOURS",
    "PALETTE",
    "BeaconShapes",
    "make_sample",
    "distance_to_beacon",
]

NUM_CLASSES = 4
CLASS_NAMES = ("background", "red", "green", "blue")
# The beacon colour of class c is BEACON_COLOURS[c - 1] (RGB in [0, 1]).
BEACON_COLOURS = ((0.95, 0.1, 0.1), (0.1, 0.85, 0.1), (0.15, 0.3, 0.95))
# Colours used to draw label maps.
PALETTE = ((0.12, 0.12, 0.12), (0.89, 0.26, 0.2), (0.3, 0.69, 0.29), (0.22, 0.49, 0.72))


def _rand(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=gen).item()


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """An int in [low, high] (both included)."""
    return int(torch.randint(low, high + 1, (), generator=gen).item())


def _check_sample_args(
    size: object, num_shapes: object, beacon_size: object, noise: object
) -> tuple[int, int, int, float]:
    """The generator's settings, checked: sizes are ints, the image holds the beacon."""
    beacon_size = check_int("beacon_size", beacon_size, minimum=1)
    size = check_int("size", size, minimum=4 * beacon_size)
    num_shapes = check_int("num_shapes", num_shapes, minimum=1)
    noise = check_float("noise", noise, minimum=0.0)
    if size < 24:  # a shape has radius up to 10 and must fit inside the image
        raise ValueError(f"size must be >= 24 (room for the shapes), got {size}")
    return size, num_shapes, beacon_size, noise


def make_sample(
    seed: int,
    index: int,
    *,
    size: int = 96,
    num_shapes: int = 3,
    beacon_size: int = 6,
    noise: float = 0.12,
) -> dict[str, torch.Tensor | int | tuple[int, int]]:
    """Generate sample ``index`` of the dataset with ``seed``.

    Returns a dict with
      ``image``  (3, size, size) float32 in [0, 1],
      ``label``  (size, size) int64 in {0, .., NUM_CLASSES-1},
      ``beacon_class`` (int, 1..3), ``beacon_corner`` ((row, col) of its top-left pixel),
      ``shape_mask`` (size, size) bool, the pixels of the grey shapes,
      ``beacon_size`` (int).

    Deterministic for a given ``(seed, index)`` and CPU kernel family: the
    beacon, the shapes and so the labels come from the generator's uniform
    draws, but the noise comes from torch's float32 normal kernel, which
    computes its logarithms and sines with vectorised code where torch has
    built its AVX2 or AVX-512 kernels and with the C library elsewhere.  So
    the images are bitwise equal on x86 CPUs with AVX2 or AVX-512 and may
    differ in the last bits on others; on one machine, torch's
    ``ATEN_CPU_CAPABILITY=default`` changes the images and leaves the labels.
    """
    seed = check_int("seed", seed, minimum=0)
    index = check_int("index", index, minimum=0)
    size, num_shapes, beacon_size, noise = _check_sample_args(size, num_shapes, beacon_size, noise)
    # One generator per sample, seeded from (seed, index): order-independent.
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(index))

    # Background: mid-grey noise, the same distribution for every class.
    image = 0.45 + noise * torch.randn(3, size, size, generator=gen)

    rows = torch.arange(size, dtype=torch.float32)[:, None]
    cols = torch.arange(size, dtype=torch.float32)[None, :]

    # The beacon: a small saturated square somewhere in the image.
    beacon_class = _randint(gen, 1, NUM_CLASSES - 1)
    br = _randint(gen, 0, size - beacon_size)
    bc = _randint(gen, 0, size - beacon_size)
    beacon = torch.zeros(size, size, dtype=torch.bool)
    beacon[br : br + beacon_size, bc : bc + beacon_size] = True
    # Keep shapes a little away from the beacon so that they never touch it.
    keep_out = torch.zeros(size, size, dtype=torch.bool)
    keep_out[max(br - 3, 0) : br + beacon_size + 3, max(bc - 3, 0) : bc + beacon_size + 3] = True

    # The shapes: light-grey squares or discs with the same noise texture.
    shapes = torch.zeros(size, size, dtype=torch.bool)
    for _ in range(num_shapes):
        for _attempt in range(20):  # rejection sampling: no overlap with the beacon
            radius = _rand(gen, 5.0, 10.0)
            cy = _rand(gen, radius, size - 1 - radius)
            cx = _rand(gen, radius, size - 1 - radius)
            if torch.rand((), generator=gen).item() < 0.5:
                shape = ((rows - cy).abs() <= radius) & ((cols - cx).abs() <= radius)
            else:
                shape = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
            if not (shape & keep_out).any():
                shapes |= shape
                break
    image[:, shapes] = 0.8 + noise * torch.randn(3, int(shapes.sum()), generator=gen)
    colour = torch.tensor(BEACON_COLOURS[beacon_class - 1])
    image[:, beacon] = colour[:, None] + 0.03 * torch.randn(3, int(beacon.sum()), generator=gen)
    image = image.clamp_(0.0, 1.0)

    label = torch.zeros(size, size, dtype=torch.int64)
    label[shapes | beacon] = beacon_class
    return {
        "image": image,
        "label": label,
        "beacon_class": beacon_class,
        "beacon_corner": (br, bc),
        "shape_mask": shapes,
        "beacon_size": beacon_size,
    }


class BeaconShapes(Dataset):
    """The beacon-shapes task as a map-style dataset of ``length`` samples.

    ``dataset[i]`` returns ``(image (3, S, S) float32, label (S, S) int64)``,
    generated on the fly from ``(seed, i)``; nothing is stored or downloaded.
    Use different seeds for training and validation (e.g. 0 and 1).
    """

    def __init__(
        self,
        length: int,
        *,
        seed: int = 0,
        size: int = 96,
        num_shapes: int = 3,
        beacon_size: int = 6,
        noise: float = 0.12,
    ) -> None:
        self.length = check_int("length", length, minimum=1)
        self.seed = check_int("seed", seed, minimum=0)
        size, num_shapes, beacon_size, noise = _check_sample_args(
            size, num_shapes, beacon_size, noise
        )
        if size % 8 != 0:
            raise ValueError(f"size must be a multiple of 8 (output stride 8), got {size}")
        self.kwargs = dict(size=size, num_shapes=num_shapes, beacon_size=beacon_size, noise=noise)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length}")
        sample = make_sample(self.seed, index % self.length, **self.kwargs)
        return sample["image"], sample["label"]  # type: ignore[return-value]

    def batch(self, indices: range | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack several samples: images (B, 3, S, S), labels (B, S, S)."""
        if not isinstance(indices, (range, list, tuple)):
            raise TypeError(
                f"indices must be a range or a list of ints, got {type(indices).__name__}"
            )
        if len(indices) == 0:
            raise ValueError("indices must not be empty")
        images, labels = zip(*(self[i] for i in indices), strict=True)
        return torch.stack(images), torch.stack(labels)


def distance_to_beacon(sample: dict) -> torch.Tensor:
    """Chebyshev distance (pixels) of every pixel to the nearest beacon pixel: (S, S).

    Used to split the accuracy into "near" pixels, which a backbone's
    receptive field can connect to the beacon, and "far" ones, which need context.
    """
    if not isinstance(sample, dict) or not {"label", "beacon_corner", "beacon_size"} <= set(sample):
        raise TypeError("sample must be a dict from make_sample (label, beacon_corner, ...)")
    label = sample["label"]
    size = label.shape[-1]
    br, bc = sample["beacon_corner"]
    rows = torch.arange(size)[:, None]
    cols = torch.arange(size)[None, :]
    beacon_size = int(sample["beacon_size"])
    dr = (br - rows).clamp(min=0) + (rows - (br + beacon_size - 1)).clamp(min=0)
    dc = (bc - cols).clamp(min=0) + (cols - (bc + beacon_size - 1)).clamp(min=0)
    return torch.maximum(dr, dc)
