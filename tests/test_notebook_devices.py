"""The chapters draw random numbers on the CPU, so that they print the same numbers on a GPU.

CUDA's generator gives other numbers than the CPU's for the same seed, so an input drawn with
``torch.randn(..., device=device)`` changes every number derived from it on a GPU. The
chapters draw on the CPU (or from a CPU ``torch.Generator``) and move the result with
``.to(device)``; this test finds any random draw that names a device other than the CPU or
``meta`` (shapes only, no numbers), and any generator made on another device.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# Functions and methods that draw random numbers.
RANDOM_CALL_RE = re.compile(
    r"\b(?:randn|rand|randint|randperm|randn_like|rand_like|randint_like|normal|bernoulli|"
    r"multinomial|poisson|normal_|uniform_|random_|exponential_|geometric_|cauchy_|"
    r"log_normal_|bernoulli_|Generator|dropout)\s*\("
)
DEVICE_ARG_RE = re.compile(r"\bdevice\s*=\s*(?P<value>[^,)]+)")
ALLOWED_DEVICES = {'"cpu"', "'cpu'", '"meta"', "'meta'"}


def call_text(source: str, open_paren: int) -> str:
    """The text of a call from its opening parenthesis to the matching closing one."""
    depth = 0
    for pos in range(open_paren, len(source)):
        depth += {"(": 1, ")": -1}.get(source[pos], 0)
        if depth == 0:
            return source[open_paren : pos + 1]
    return source[open_paren:]


def random_draws_on_a_device(source: str) -> list[str]:
    """The random calls in ``source`` whose own arguments name a device other than cpu/meta,
    and the in-place draws (``.normal_()``, ...) on a tensor made on such a device."""
    found = []
    for match in RANDOM_CALL_RE.finditer(source):
        arguments = call_text(source, match.end() - 1)
        # An in-place draw: look at the call it is chained to, e.g. torch.empty(..., device=d).
        line_start = source.rfind("\n", 0, match.start()) + 1
        chained = source[line_start : match.start()] if match.group(0).endswith("_(") else ""
        for text in (arguments, chained):
            for device in DEVICE_ARG_RE.finditer(text):
                if device.group("value").strip() not in ALLOWED_DEVICES:
                    found.append(source[match.start() : match.end() - 1] + arguments)
    return found


def code_cells(path: Path) -> list[tuple[int, str]]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [
        (index, "".join(cell["source"]))
        for index, cell in enumerate(cells)
        if cell["cell_type"] == "code"
    ]


@pytest.mark.parametrize(
    "source",
    [
        "x = torch.randn(1, 16, h, w, device=device)",
        "x = torch.rand(2, 3, device=torch.device('cuda'))",
        "noise = torch.randint(0, 4, (8,), device=x.device)",
        "w = torch.empty(3, 3, device=device).normal_(0, 1)",
        "g = torch.Generator(device=device).manual_seed(0)",
        "x = torch.randn(\n    1, C, H, W, dtype=torch.float64, device=device\n)",
    ],
)
def test_a_draw_on_the_device_is_found(source):
    assert random_draws_on_a_device(source)


@pytest.mark.parametrize(
    "source",
    [
        "x = torch.randn(1, 16, h, w).to(device)",
        "x = torch.randn(1, 16, h, w, device='cpu')",
        'x = torch.randn(1, 512, 97, 97, device="meta")',
        "g = torch.Generator().manual_seed(0)\nx = torch.randn(3, generator=g).to(device)",
        "model = conv_stack(16, 4).to(device)\nx = torch.empty(1, 3, device=device)",
    ],
)
def test_a_draw_on_the_cpu_passes(source):
    assert random_draws_on_a_device(source) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_no_chapter_draws_random_numbers_on_its_device(path):
    offending = [
        f"cell {index}: {call}"
        for index, source in code_cells(path)
        for call in random_draws_on_a_device(source)
    ]
    assert offending == [], f"{path.name} draws on a device; draw on the CPU and .to(device):\n" + (
        "\n".join(offending)
    )


def test_every_chapter_is_scanned():
    assert len(NOTEBOOKS) >= 12
