"""The documented minimum Python is pyproject's ``requires-python``, and the pins allow it.

``make`` installs the versions pinned in constraints.txt; several of them (numpy, scipy,
matplotlib, ...) declare ``Requires-Python: >=3.11`` and soupsieve ``>=3.11.5``, so a page that
promises an older Python promises an install that stops with "No matching distribution". The
pins are checked offline, against the metadata of the distributions installed at their pinned
version.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
# Pages that tell the reader which Python to install, and how they say it (book/intro.md links
# to book/setup.md instead).
PAGES = ("README.md", "book/setup.md")
# book/setup.md names these pins and the Python each of them needs, in this sentence.
NAMED_PINS = {"numpy": "3.11", "scipy": "3.11", "matplotlib": "3.11", "soupsieve": "3.11.5"}
NAMED_SENTENCE = "numpy, scipy and matplotlib, for example, need Python 3.11, soupsieve 3.11.5"
STATED_RE = re.compile(r"Python (\d+\.\d+(?:\.\d+)?)(?:\+| or newer)")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def minimum_python() -> str:
    """The ``X.Y.Z`` of pyproject's ``requires-python = ">=X.Y.Z"``."""
    spec = _pyproject()["project"]["requires-python"]
    match = re.fullmatch(r">=\s*(\d+\.\d+\.\d+)", spec)
    assert match, f"requires-python should be a lower bound '>=X.Y.Z', got {spec!r}"
    return match.group(1)


def pins() -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line of constraints.txt."""
    found = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            found[canonicalize_name(name.split("[")[0])] = version.split(";")[0].strip()
    return found


def test_pages_state_the_minimum_of_pyproject():
    minimum = minimum_python()
    for page in PAGES:
        stated = STATED_RE.findall((ROOT / page).read_text(encoding="utf-8"))
        assert stated, f"{page} no longer says which Python it needs (update PAGES or the page)"
        assert set(stated) == {minimum}, f"{page} states Python {stated}, pyproject >={minimum}"


def test_ruff_targets_the_minimum():
    target = _pyproject()["tool"]["ruff"]["target-version"]
    major, minor, _ = minimum_python().split(".")
    assert target == f"py{major}{minor}"


def test_pins_install_on_the_minimum_and_it_is_needed():
    minimum = minimum_python()
    major, minor, patch = (int(v) for v in minimum.split("."))
    # the release just below the minimum (3.11.4 for 3.11.5; 3.10.99 stands for any 3.10)
    below = f"{major}.{minor}.{patch - 1}" if patch else f"{major}.{minor - 1}.99"
    checked, need_minimum = [], []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if pins().get(name) != dist.version:
            continue  # not installed at its pin here: nothing to read offline
        requires = dist.metadata.get("Requires-Python")
        if not requires:
            continue
        spec = SpecifierSet(requires)
        assert spec.contains(minimum), (
            f"{name}=={dist.version} requires Python {requires}, not {minimum}"
        )
        checked.append(name)
        if not spec.contains(below):
            need_minimum.append(name)
    assert len(checked) >= 20, f"only {len(checked)} pins could be checked: {checked}"
    # The bound is not looser than the pins: some pin refuses the Python below it.
    assert need_minimum, f"no pin needs Python {minimum}; requires-python could be lower"


def _release_below(version: str) -> str:
    """The release just below ``version``: 3.11.4 for 3.11.5, 3.10.99 (any 3.10) for 3.11."""
    major, minor, *patch = (int(v) for v in version.split("."))
    if patch and patch[0]:
        return f"{major}.{minor}.{patch[0] - 1}"
    return f"{major}.{minor - 1}.99"


def test_named_pins_need_what_the_setup_page_says():
    setup = " ".join((ROOT / "book" / "setup.md").read_text(encoding="utf-8").split())
    installed = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}
    assert NAMED_SENTENCE in setup, "book/setup.md no longer names the pins: update NAMED_PINS"
    for name, needs in NAMED_PINS.items():
        dist = installed.get(name)
        assert dist is not None and pins().get(name) == dist.version, (
            f"{name} is not installed at its pin {pins().get(name)}: cannot read its metadata"
        )
        spec = SpecifierSet(dist.metadata["Requires-Python"])
        assert spec.contains(f"{needs}.0" if needs.count(".") == 1 else needs), (name, spec)
        assert not spec.contains(_release_below(needs)), (name, spec, needs)
