"""The library's own source, as the book shows it: one home for the chapters' ``show_source``.

The chapters print the functions they explain from the library itself (never a pasted
copy), so the text a reader sees is the code that runs.
"""

from __future__ import annotations

import inspect
import textwrap

from ._checks import check_str

__all__ = ["source_markdown", "show_source"]


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
