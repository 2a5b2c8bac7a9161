"""ccnet_edu.source: the chapters' view of the library's own code."""

from __future__ import annotations

import inspect

import pytest

from ccnet_edu import issa, source


def test_whole_source_is_the_code_that_runs():
    text = source.source_markdown(issa._interlaced_steps)
    assert text == "```python\n" + inspect.getsource(issa._interlaced_steps) + "```"


def test_marked_lines_are_cut_and_dedented():
    text = source.source_markdown(issa._long_range_step, "# Long range:", "attend_long(")
    lines = text.splitlines()
    assert lines[0] == "```python" and lines[-1] == "```"
    assert lines[1].startswith("# Long range:")  # dedented to column 0
    assert "attend_long(" in lines[-2]
    assert "# Short range:" not in text


def test_source_lines_cuts_dedents_and_names_a_missing_marker():
    text = source.source_lines(issa._long_range_step, "# Long range:", "attend_long(")
    assert text.startswith("# Long range:") and "attend_long(" in text.splitlines()[-1]
    assert "# Short range:" not in text
    single = source.source_lines(issa._long_range_step, "# Long range:")
    assert single == "# Long range:" + single.partition("# Long range:")[2] and "\n" not in single
    with pytest.raises(ValueError, match="first"):
        source.source_lines(issa._interlaced_steps, "no such line")
    with pytest.raises(ValueError, match="last"):
        source.source_lines(issa._interlaced_steps, "# Short range:", "# Long range:")
    with pytest.raises(TypeError, match="obj"):
        source.source_lines(3, "x")


def test_paper_beside_code_puts_several_excerpts_under_their_names():
    text = source.paper_beside_code_markdown(
        ("Eq. (1): $$a = b$$ here", ("`f`", "x = 1"), ("`g`", "y = 2")),
        ("plain text", ("`h`", "z = 3")),
    )
    assert text.startswith("::::{grid} 1 1 2 2\n:gutter: 3\n") and text.endswith("\n::::")
    assert "Eq. (1):\n\n$$a = b$$\n\nhere" in text  # display maths on lines of its own
    assert "`f`\n```python\nx = 1\n```\n`g`\n```python\ny = 2\n```" in text
    assert text.count(":::{grid-item}") == 4
    with pytest.raises(ValueError, match="rows"):
        source.paper_beside_code_markdown()
    with pytest.raises(TypeError, match="row"):
        source.paper_beside_code_markdown("not a tuple")


def test_source_lines_is_the_excerpt_without_the_fence():
    excerpt = source.source_lines(issa._long_range_step, "# Long range:", "attend_long(")
    fenced = source.source_markdown(issa._long_range_step, "# Long range:", "attend_long(")
    assert fenced == "```python\n" + excerpt + "\n```"
    one = source.source_lines(issa._long_range_step, "# Long range:")
    assert one.startswith("# Long range:") and "\n" not in one


def test_paper_beside_code_puts_each_pair_in_two_grid_items():
    text = source.paper_beside_code_markdown(
        ("Eq. (1): $$y = x$$ in words", ("`f`", "y = x")),
        ("Eq. (2)", ("`g`", "z = y")),
    )
    assert text.startswith("::::{grid} 1 1 2 2") and text.endswith("::::")
    assert text.count(":::{grid-item}") == 4
    assert "\n\n$$y = x$$\n\n" in text  # display maths on lines of their own
    assert "`g`\n```python\nz = y\n```" in text


def test_csrc_lines_are_the_file_s_own_lines():
    from ccnet_edu.ops import csrc_dir

    text = source.csrc_lines("cca_tiling.h", "inline float merge_lse(", "}")
    lines = text.splitlines()
    assert "merge_lse(" in lines[0] and lines[-1].strip() == "}"
    assert text in (csrc_dir() / "cca_tiling.h").read_text()


def test_csrc_definitions_match_braces_and_keep_the_comment_above():
    text = source.csrc_definitions("cca_common.h", "tile_fma", "slot_pixel")
    assert text.startswith("//")  # the comment above tile_fma
    assert text.index("tile_fma(") < text.index("slot_pixel(")  # in the order asked
    assert text.count("{") == text.count("}")  # whole bodies, braces balanced
    assert text.rstrip().endswith("}")


def test_csrc_opening_comment_stops_at_the_first_code_line():
    text = source.csrc_opening_comment("cca_simd.h")
    assert all(line.startswith("//") for line in text.splitlines())
    assert "x86-64-v3 and -v4 builds" in text
