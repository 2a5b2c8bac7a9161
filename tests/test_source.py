"""ccnet_edu.source: the chapters' view of the library's own code."""

from __future__ import annotations

import inspect

import pytest

from ccnet_edu import issa, source


def test_whole_source_is_the_code_that_runs():
    text = source.source_markdown(issa._interlaced_steps)
    assert text == "```python\n" + inspect.getsource(issa._interlaced_steps) + "```"


def test_marked_lines_are_cut_and_dedented():
    text = source.source_markdown(issa._interlaced_steps, "# Long range:", "attend_long(")
    lines = text.splitlines()
    assert lines[0] == "```python" and lines[-1] == "```"
    assert lines[1].startswith("# Long range:")  # dedented to column 0
    assert "attend_long(" in lines[-2]
    assert "# Short range:" not in text


def test_source_lines_cuts_dedents_and_names_a_missing_marker():
    text = source.source_lines(issa._interlaced_steps, "# Long range:", "attend_long(")
    assert text.startswith("# Long range:") and "attend_long(" in text.splitlines()[-1]
    assert "# Short range:" not in text
    single = source.source_lines(issa._interlaced_steps, "# Long range:")
    assert single == "# Long range:" + single.partition("# Long range:")[2] and "\n" not in single
    with pytest.raises(ValueError, match="first"):
        source.source_lines(issa._interlaced_steps, "no such line")
    with pytest.raises(ValueError, match="last"):
        source.source_lines(issa._interlaced_steps, "# Short range:", "# Long range:")
    with pytest.raises(TypeError, match="obj"):
        source.source_lines(3, "x")


def test_paper_beside_markdown_puts_excerpts_under_their_names():
    text = source.paper_beside_markdown(
        ("Eq. (1): $$a = b$$ here", ("`f`", "x = 1"), ("`g`", "y = 2")),
        ("plain text", ("`h`", "z = 3")),
    )
    assert text.startswith("::::{grid} 1 1 2 2\n:gutter: 3\n") and text.endswith("\n::::")
    assert "Eq. (1):\n\n$$a = b$$\n\nhere" in text  # display maths on lines of its own
    assert "`f`\n```python\nx = 1\n```\n`g`\n```python\ny = 2\n```" in text
    assert text.count(":::{grid-item}") == 4
    with pytest.raises(ValueError, match="rows"):
        source.paper_beside_markdown()
    with pytest.raises(TypeError, match="row"):
        source.paper_beside_markdown("not a tuple")
