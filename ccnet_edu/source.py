"""The library's own source, as the book shows it: one home for the chapters' ``show_source``.

The chapters print the functions they explain from the library itself (never a pasted
copy), so the text a reader sees is the code that runs.
"""

from __future__ import annotations

import inspect
import re
import textwrap

from ._checks import check_str

__all__ = [
    "source_markdown",
    "show_source",
    "source_lines",
    "paper_beside_markdown",
    "paper_beside_code",
]


def source_markdown(obj: object, start: str | None = None, stop: str | None = None) -> str:
    """A Markdown ``python`` code block holding the source of ``obj``.

    With ``start`` and ``stop``, only the lines from the first that contains
    ``start`` to the first one after it that contains ``stop``, dedented.

    Raises:
        TypeError: ``obj`` has no Python source (a number, a builtin, ...), or
            ``start``/``stop`` is not a str.
        ValueError: only one of ``start`` and ``stop`` is given, or a marker is
            not in the source.
    """
    if (start is None) != (stop is None):
        raise ValueError("start and stop must be given together (or neither)")
    try:
        lines = inspect.getsource(obj).splitlines()
    except (TypeError, OSError) as error:
        raise TypeError(
            f"obj must be a Python function, class or module with source, got {obj!r}"
        ) from error
    if start is not None:
        check_str("start", start)
        check_str("stop", stop)
        first = next((n for n, line in enumerate(lines) if start in line), None)
        if first is None:
            raise ValueError(f"start: no line of the source contains {start!r}")
        last = next((n for n in range(first, len(lines)) if stop in lines[n]), None)
        if last is None:
            raise ValueError(f"stop: no line from {start!r} on contains {stop!r}")
        lines = textwrap.dedent("\n".join(lines[first : last + 1])).splitlines()
    return "```python\n" + "\n".join(lines) + "\n```"


def show_source(obj: object, start: str | None = None, stop: str | None = None) -> None:
    """Display :func:`source_markdown` in a notebook (IPython's ``Markdown``)."""
    from IPython.display import Markdown, display

    display(Markdown(source_markdown(obj, start, stop)))


def source_lines(obj: object, first: str, last: str | None = None) -> str:
    """The lines of ``obj``'s source from the first that contains ``first`` to the next
    one that contains ``last`` (or that line alone when ``last`` is None), dedented.

    Raises:
        TypeError: ``obj`` has no Python source, or a marker is not a str.
        ValueError: a marker is not in the source (the error names it).
    """
    check_str("first", first)
    if last is not None:
        check_str("last", last)
    try:
        lines = inspect.getsourcelines(obj)[0]
    except (TypeError, OSError) as error:
        raise TypeError(
            f"obj must be a Python function, class or module with source, got {obj!r}"
        ) from error
    name = getattr(obj, "__qualname__", repr(obj))
    start = next((n for n, line in enumerate(lines) if first in line), None)
    if start is None:
        raise ValueError(f"first: {first!r} is not in the source of {name}")
    stop = next((n for n in range(start, len(lines)) if (last or first) in lines[n]), None)
    if stop is None:
        raise ValueError(f"last: {last!r} does not follow {first!r} in {name}")
    return textwrap.dedent("".join(lines[start : stop + 1])).rstrip()


def paper_beside_markdown(*rows: tuple) -> str:
    """Rows ``(paper, (where, lines), ...)`` as a MyST grid: the paper's text on the left,
    on the right one or more excerpts of the library, each under the name it is from.

    Display maths (``$$...$$``) in the paper's text is put on lines of its own.
    """
    if not rows:
        raise ValueError("rows must not be empty")
    items = []
    for row in rows:
        if not isinstance(row, tuple) or len(row) < 2:
            raise TypeError(f"each row must be a tuple (paper, (where, lines), ...), got {row!r}")
        paper, *excerpts = row
        paper = re.sub(r"\s*(\$\$.+?\$\$)\s*", r"\n\n\1\n\n", paper, flags=re.S)
        items.append(f":::{{grid-item}}\n:columns: 12 12 6 6\n\n{paper}\n:::")
        code = "\n".join(f"{where}\n```python\n{lines}\n```" for where, lines in excerpts)
        items.append(f":::{{grid-item}}\n:columns: 12 12 6 6\n\n{code}\n:::")
    return "::::{grid} 1 1 2 2\n:gutter: 3\n\n" + "\n".join(items) + "\n::::"


def paper_beside_code(*rows: tuple) -> None:
    """Display :func:`paper_beside_markdown` in a notebook (IPython's ``Markdown``)."""
    from IPython.display import Markdown, display

    display(Markdown(paper_beside_markdown(*rows)))
