"""ccnet_edu.source: the chapters' view of the library's own code."""

from __future__ import annotations

import inspect

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
