"""The library's own source, as the book shows it: one home for the chapters' ``show_source``.

The chapters print the functions they explain from the library itself (never a pasted
copy), so the text a reader sees is the code that runs: the Python source of its objects,
and excerpts of the C++/CUDA files in ``csrc/`` (:func:`csrc_lines`,
:func:`csrc_definitions`, :func:`csrc_opening_comment`, shown with :func:`show_csrc`).
"""

from __future__ import annotations

import inspect
import re
import textwrap

from ._checks import check_str

__all__ = [
    "csrc_definitions",
    "csrc_lines",
    "csrc_opening_comment",
    "paper_beside_code",
    "paper_beside_code_markdown",
    "show_csrc",
    "show_source",
    "source_lines",
    "source_markdown",
]


def _python_source(obj: object) -> list[str]:
    """The lines of ``obj``'s Python source; TypeError when it has none."""
    try:
        return inspect.getsource(obj).splitlines()
    except (TypeError, OSError) as error:
        raise TypeError(
            f"obj must be a Python function, class or module with source, got {obj!r}"
        ) from error


def _between(
    lines: list[str], start: str, stop: str, names: tuple[str, str], where: str
) -> list[str]:
    """``lines`` from the first that contains ``start`` to the first one after it that
    contains ``stop``; ValueError naming the argument (``names``) that is not found."""
    first = next((n for n, line in enumerate(lines) if start in line), None)
    if first is None:
        raise ValueError(f"{names[0]}: no line of {where} contains {start!r}")
    last = next((n for n in range(first, len(lines)) if stop in lines[n]), None)
    if last is None:
        raise ValueError(f"{names[1]}: no line of {where} from {start!r} on contains {stop!r}")
    return lines[first : last + 1]


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
    lines = _python_source(obj)
    if start is not None:
        check_str("start", start)
        check_str("stop", stop)
        excerpt = _between(lines, start, stop, ("start", "stop"), "the source")
        lines = textwrap.dedent("\n".join(excerpt)).splitlines()
    return "```python\n" + "\n".join(lines) + "\n```"


def show_source(obj: object, start: str | None = None, stop: str | None = None) -> None:
    """Display :func:`source_markdown` in a notebook (IPython's ``Markdown``)."""
    from IPython.display import Markdown, display

    display(Markdown(source_markdown(obj, start, stop)))


def source_lines(obj: object, first: str, last: str | None = None) -> str:
    """The lines of ``obj``'s source from the first one that contains ``first`` to the
    first one after it that contains ``last`` (or that line alone), dedented, as text.

    Raises:
        TypeError: ``obj`` has no Python source, or ``first``/``last`` is not a str.
        ValueError: a marker is not in the source.
    """
    check_str("first", first)
    if last is not None:
        check_str("last", last)
    excerpt = _between(_python_source(obj), first, last or first, ("first", "last"), "the source")
    return textwrap.dedent("\n".join(excerpt)).rstrip()


def paper_beside_code_markdown(*rows: tuple) -> str:
    """``(paper, (where, code), ...)`` rows as a MyST grid: the paper's text on the left, on
    the right one or more of the library's excerpts (from :func:`source_lines`), each under
    the name ``where`` it is from.

    Display maths (``$$...$$``) in the paper's text is put on lines of its own.

    Raises:
        TypeError: a row is not ``(str, (str, str), ...)``.
        ValueError: no row is given.
    """
    if not rows:
        raise ValueError("rows: give at least one (paper, (where, code)) row")
    items = []
    for n, row in enumerate(rows):
        if not (
            isinstance(row, tuple)
            and len(row) >= 2
            and isinstance(row[0], str)
            and all(
                isinstance(excerpt, tuple)
                and len(excerpt) == 2
                and all(isinstance(part, str) for part in excerpt)
                for excerpt in row[1:]
            )
        ):
            raise TypeError(f"rows[{n}] must be (paper, (where, code), ...) of str, got {row!r}")
        paper, *excerpts = row
        paper = re.sub(r"\s*(\$\$.+?\$\$)\s*", r"\n\n\1\n\n", paper, flags=re.S)  # display maths
        items.append(f":::{{grid-item}}\n:columns: 12 12 6 6\n\n{paper}\n:::")
        code = "\n".join(f"{where}\n```python\n{lines}\n```" for where, lines in excerpts)
        items.append(f":::{{grid-item}}\n:columns: 12 12 6 6\n\n{code}\n:::")
    return "::::{grid} 1 1 2 2\n:gutter: 3\n\n" + "\n".join(items) + "\n::::"


def paper_beside_code(*rows: tuple) -> None:
    """Display :func:`paper_beside_code_markdown` in a notebook (IPython's ``Markdown``)."""
    from IPython.display import Markdown, display

    display(Markdown(paper_beside_code_markdown(*rows)))


def _csrc_text(path: str) -> str:
    """The text of ``csrc/<path>``, a file name inside the operator's sources."""
    from .ops import csrc_dir

    check_str("path", path)
    root = csrc_dir().resolve()
    file = (root / path).resolve()
    if file.parent != root or not file.is_file():
        raise ValueError(f"path must name a file in csrc/, got {path!r}")
    return file.read_text(encoding="utf-8")


def csrc_lines(path: str, start: str, stop: str) -> str:
    """The lines of ``csrc/<path>`` from the first that contains ``start`` to the first one
    after it that contains ``stop``, as the file has them.

    Raises:
        TypeError: an argument is not a str.
        ValueError: ``path`` names no file in ``csrc/``, or a marker is not in it.
    """
    check_str("start", start)
    check_str("stop", stop)
    lines = _csrc_text(path).splitlines()
    return "\n".join(_between(lines, start, stop, ("start", "stop"), f"csrc/{path}"))


def _definition(text: str, path: str, name: str) -> str:
    """The definition of function or struct ``name`` in ``text``, with the comment and
    ``template`` lines right above it, to its matching closing brace."""
    pattern = rf"\bstruct\s+{re.escape(name)}\b|\b{re.escape(name)}\s*(<[^;{{}}]*>)?\s*\("
    for match in re.finditer(pattern, text):
        line_start = text.rfind("\n", 0, match.start()) + 1
        if re.search(r"//|\(|=", text[line_start : match.start()]):
            continue  # in a comment, or a call
        brace = text.find("{", match.end())
        if brace > 0 and ";" not in text[match.end() : brace]:
            break  # a definition: the body follows before any ';'
    else:
        raise ValueError(f"names: no definition of {name!r} in csrc/{path}")
    depth, pos = 0, brace
    while pos < len(text):  # to the matching closing brace, skipping // comments
        if text.startswith("//", pos):
            pos = text.find("\n", pos)
            if pos < 0:
                break
        elif text[pos] in "{}":
            depth += 1 if text[pos] == "{" else -1
            if depth == 0:
                break
        pos += 1
    else:
        raise ValueError(f"names: the definition of {name!r} in csrc/{path} never closes")
    before = text[:line_start].split("\n")[:-1]
    above: list[str] = []
    while before and before[-1].lstrip().startswith(("//", "template")):
        above.insert(0, before.pop())  # its comment and template line
    end = text.find("\n", pos)
    return "\n".join([*above, text[line_start : end if end >= 0 else None]])


def csrc_definitions(path: str, *names: str) -> str:
    """The whole definitions of the functions or structs ``names`` in ``csrc/<path>``, each
    with the comment and ``template`` lines above it, separated by blank lines.

    Raises:
        TypeError: an argument is not a str.
        ValueError: no name is given, ``path`` names no file in ``csrc/``, or a name has
            no definition there.
    """
    if not names:
        raise ValueError("names: give at least one function or struct name")
    for n, name in enumerate(names):
        check_str(f"names[{n}]", name)
    text = _csrc_text(path)
    return "\n\n".join(_definition(text, path, name) for name in names)


def csrc_opening_comment(path: str) -> str:
    """The block of ``//`` lines that opens ``csrc/<path>``.

    Raises:
        TypeError: ``path`` is not a str.
        ValueError: ``path`` names no file in ``csrc/``, or the file opens with no comment.
    """
    block = []
    for line in _csrc_text(path).splitlines():
        if not line.startswith("//"):
            break
        block.append(line)
    if not block:
        raise ValueError(f"path: csrc/{path} does not open with a // comment")
    return "\n".join(block)


def show_csrc(path: str, text: str, language: str = "cpp") -> None:
    """Display ``text`` (one of the ``csrc_*`` excerpts of ``csrc/<path>``) as a code block
    headed by the file's name, in a notebook."""
    from IPython.display import Markdown, display

    check_str("path", path)
    check_str("text", text)
    check_str("language", language)
    display(Markdown(f"`csrc/{path}`\n```{language}\n{text}\n```"))
