"""Read the PDF that ``make pdf`` built (``tools/build_pdf.py``) with poppler and check it.

The expectations come from the sources, not from a list kept here: the pages and chapters of
the toc the PDF was built from (``_build/pdf/ccnet-edu-src/_toc.yml``, the book's ``_toc.yml`` or
the part of it that ``--chapters`` kept), their first headings, and the notebooks' stored
figures. Checked, with poppler's ``pdfinfo``, ``pdftotext``, ``pdfimages`` and ``pdftohtml -xml``:

* the contents list every page of the toc in order, numbered chapters with their number, each
  with a page number, and that page starts with the page's title (order and numbers right);
* every contents entry is a link to the page it names (internal links work), and the body has
  internal links of its own (cross-references, citations);
* no raw TeX (``$``, ``\\frac``, ``\\begin{`` ...) or MyST syntax (``{cite}``, ``:::`` ...) is
  left in the prose: text in the book's proportional font (code and outputs are set in the
  monospaced font and may hold such characters);
* every chapter holds at least as many images as its notebook has cells with a PNG figure;
* the page count is in a range, and no page is blank.

Skipped when the PDF or poppler is missing, unless ``PDF_REQUIRED=1`` (``make pdf-check``).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import unicodedata
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PDF = ROOT / "_build" / "pdf" / "ccnet-edu.pdf"
BUILT_TOC = PDF.parent / f"{PDF.stem}-src" / "_toc.yml"
REQUIRED = os.environ.get("PDF_REQUIRED", "") not in ("", "0")

sys.path.insert(0, str(ROOT / "tools"))
import build_pdf  # noqa: E402

# What must never reach the prose of the PDF: TeX that MathJax did not typeset, MyST syntax that
# was not parsed.
RAW_PATTERNS = [
    "$",
    "\\frac",
    "\\mathbf",
    "\\mathrm",
    "\\begin{",
    "\\(",
    "\\[",
    ":::",
    "```",
    *(f"{{{role}}}" for role in ("math", "cite", "doc", "ref", "numref", "eq", "term", "glue")),
]


def _need_pdf() -> None:
    missing = [
        tool
        for tool in ("pdfinfo", "pdftotext", "pdfimages", "pdftohtml")
        if shutil.which(tool) is None
    ]
    reason = None
    if missing:
        reason = f"poppler-utils is not installed ({', '.join(missing)} missing)"
    elif not PDF.is_file() or not BUILT_TOC.is_file():
        reason = f"{PDF} is not built (make pdf)"
    if reason:
        if REQUIRED:
            pytest.fail(f"{reason} (PDF_REQUIRED is set, so this is an error)")
        pytest.skip(reason)


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def _squash(text: str) -> str:
    """Whitespace collapsed and ligatures (fi, ff ...) spelled out, as poppler's tools differ."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()


def first_heading(docname: str) -> str:
    """The page's title as its source writes it (first ``# `` heading), Markdown removed."""
    for suffix in (".ipynb", ".md"):
        path = ROOT / f"{docname}{suffix}"
        if path.is_file():
            break
    else:
        raise AssertionError(f"{docname} is in the toc but has no source")
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    else:
        text = path.read_text(encoding="utf-8")
    m = re.search(r"^# (.+)$", text, re.MULTILINE)
    assert m, f"{path} has no '# ' heading"
    return _squash(re.sub(r"[*_`]", "", m[1]))


def expected_pages() -> list[dict[str, Any]]:
    """Every page of the built toc in order: docname, title, chapter number (or None)."""
    toc = yaml.safe_load(BUILT_TOC.read_text(encoding="utf-8"))
    pages = [{"doc": toc["root"], "title": first_heading(toc["root"]), "number": None}]
    chapter = 0
    for part in toc["parts"]:
        for entry in part["chapters"]:
            number = None
            if part.get("numbered"):
                chapter += 1
                number = chapter
            pages.append(
                {"doc": entry["file"], "title": first_heading(entry["file"]), "number": number}
            )
            for section in entry.get("sections", []):
                pages.append(
                    {
                        "doc": section["file"],
                        "title": first_heading(section["file"]),
                        "number": None,
                    }
                )
    return pages


@cache
def page_texts() -> list[str]:
    """The text of every page (pdftotext; pages end with a form feed)."""
    return _run("pdftotext", "-layout", str(PDF), "-").split("\f")[:-1]


TEXT_RE = re.compile(
    r'<text top="\d+" left="\d+" width="\d+" height="\d+" font="(\d+)">(.*?)</text>'
)
FONT_RE = re.compile(r'<fontspec id="(\d+)" size="[^"]*" family="([^"]*)"')
PAGE_RE = re.compile(r'<page number="(\d+)"')
LINK_RE = re.compile(r'<a href="([^"]*)">')


@cache
def fragments() -> list[dict[str, Any]]:
    """Every text fragment (``pdftohtml -xml``): page, font family, text, link target."""
    xml = _run("pdftohtml", "-xml", "-i", "-q", "-stdout", str(PDF))
    fonts: dict[str, str] = {}
    out = []
    page = 0
    for line in xml.splitlines():
        if m := PAGE_RE.match(line):
            page = int(m[1])
        for fid, family in FONT_RE.findall(line):
            fonts[fid] = family
        if m := TEXT_RE.search(line):
            link = LINK_RE.search(m[2])
            out.append(
                {
                    "page": page,
                    "family": fonts.get(m[1], ""),
                    "text": html.unescape(re.sub(r"<[^>]+>", "", m[2])),
                    "link": html.unescape(link[1]) if link else None,
                }
            )
    return out


def contents() -> list[tuple[str, int, str | None]]:
    """The contents' rows: (title, printed page number, page the row's link goes to)."""
    pages = expected_pages()
    first_body_page = None
    rows: list[tuple[str, int, str | None]] = []
    by_line: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for frag in fragments():
        by_line.setdefault((frag["page"], frag["text"]), []).append(frag)
    texts = page_texts()
    # The contents start on the page after the title page, under the heading "Contents".
    assert texts[1].lstrip().startswith("Contents"), "page 2 does not start the contents"
    for number, text in enumerate(texts[1:], start=2):
        if first_body_page is not None and number >= first_body_page:
            break
        for line in text.splitlines():
            m = re.match(r"^\s*(\S.*?)\s{2,}(\d+)\s*$", line)
            if not m:
                continue
            title, printed = _squash(m[1]), int(m[2])
            if first_body_page is None:
                first_body_page = printed
            link = None
            for frag in fragments():
                text = _squash(frag["text"])
                # A title with maths is cut where the maths starts (typeset as drawings).
                if frag["page"] == number and frag["link"] and text and title.startswith(text):
                    link = frag["link"]
                    break
            rows.append((title, printed, link))
    assert pages and rows, "no contents rows found"
    return rows


def _display_title(page: dict[str, Any]) -> str:
    return f"{page['number']}. {page['title']}" if page["number"] else page["title"]


def located() -> list[tuple[dict[str, Any], tuple[str, int, str | None] | None]]:
    """Each page of the toc with its contents row (or None), searched in order.

    A row is the page's title, with its chapter number for a numbered chapter; a section page
    (``NNx_*``), which Sphinx numbers NN.k, matches after any number when no row has its bare
    title (the bare title first: "References" is the back matter's, not "1.7. References").
    """
    rows = contents()
    cursor = 0
    out = []
    for page in expected_pages():
        title = _display_title(page)
        rest = list(enumerate(rows))[cursor:]
        hit = next(((i, r) for i, r in rest if r[0] == title), None)
        if hit is None and page["number"] is None:
            pattern = re.compile(rf"(\d+\.)+ {re.escape(title)}")
            hit = next(((i, r) for i, r in rest if pattern.fullmatch(r[0])), None)
        if hit is not None:
            cursor = hit[0] + 1
        out.append((page, hit[1] if hit else None))
    return out


def _pdf_pages() -> int:
    m = re.search(r"^Pages:\s+(\d+)", _run("pdfinfo", str(PDF)), re.MULTILINE)
    assert m, "pdfinfo gave no page count"
    return int(m[1])


def test_contents_list_every_page_in_order_with_page_numbers() -> None:
    _need_pdf()
    texts = page_texts()
    last = 0
    problems = []
    for page, row in located():
        if row is None:
            problems.append(
                f"{page['doc']}: {_display_title(page)!r} is not in the contents, "
                "or not in the toc's order"
            )
            continue
        row_title, printed, _ = row
        if printed < last:
            problems.append(f"{page['doc']}: on page {printed}, before the page listed above it")
        last = printed
        if not 1 <= printed <= len(texts):
            problems.append(f"{page['doc']}: page {printed} does not exist")
        elif row_title not in _squash(texts[printed - 1]):
            problems.append(f"{page['doc']}: page {printed} does not hold {row_title!r}")
    assert problems == [], "\n".join(problems)


def test_contents_link_to_their_pages_and_body_has_links() -> None:
    _need_pdf()
    rows = contents()
    wrong = [(t, p, link) for t, p, link in rows if link is None or not link.endswith(f"#{p}")]
    assert wrong == [], f"contents rows whose link does not go to their page: {wrong[:5]}"
    first_body_page = rows[0][1]
    internal = [
        f
        for f in fragments()
        if f["page"] >= first_body_page and f["link"] and re.search(r"\.html#\d+$", f["link"])
    ]
    # Cross-references and citations in the chapters: far more than one per page of the toc.
    assert len(internal) >= len(expected_pages()), (
        f"only {len(internal)} internal links in the body of the book"
    )


def test_no_raw_tex_or_myst_in_the_prose() -> None:
    _need_pdf()
    found: dict[str, list[str]] = {}
    prose = [f for f in fragments() if "Mono" not in f["family"]]
    # Both kinds of text are there: the split by font is not vacuous.
    assert len(prose) > len(expected_pages()) and len(prose) < len(fragments())
    for frag in prose:
        for pattern in RAW_PATTERNS:
            if pattern in frag["text"]:
                found.setdefault(pattern, []).append(f"p. {frag['page']}: {frag['text'][:80]}")
    assert found == {}, f"raw TeX or MyST left as text: {found}"


def test_every_figure_cell_has_an_image() -> None:
    _need_pdf()
    found = located()
    missing = [page["doc"] for page, row in found if row is None]
    assert missing == [], f"not in the contents: {missing}"
    pages = [page for page, _ in found]
    starts = [row[1] for _, row in found if row is not None]
    images_on: dict[int, int] = {}
    for line in _run("pdfimages", "-list", str(PDF)).splitlines()[2:]:
        cols = line.split()
        if len(cols) > 2 and cols[2] == "image":
            images_on[int(cols[0])] = images_on.get(int(cols[0]), 0) + 1
    short = []
    total_cells = 0
    for i, page in enumerate(pages):
        source = ROOT / f"{page['doc']}.ipynb"
        if not source.is_file():
            continue
        cells = json.loads(source.read_text(encoding="utf-8"))["cells"]
        figures = sum(
            any("image/png" in o.get("data", {}) for o in c.get("outputs", []))
            for c in cells
            if c["cell_type"] == "code"
        )
        total_cells += figures
        end = starts[i + 1] if i + 1 < len(starts) else _pdf_pages() + 1
        images = sum(n for p, n in images_on.items() if starts[i] <= p < end)
        if images < figures:
            short.append(f"{page['doc']}: {figures} figure cells, {images} images")
    assert total_cells > 0, "no notebook with figures in the PDF"
    assert short == [], "chapters with fewer images than figure cells:\n" + "\n".join(short)


def test_page_count_in_range_and_no_blank_page() -> None:
    _need_pdf()
    pages = expected_pages()
    count = _pdf_pages()
    # Title page, contents, and each page of the toc starting a new page; a chapter runs to
    # tens of pages, none to 40.
    assert len(pages) + 2 <= count <= 40 * len(pages), f"{count} pages for {len(pages)} toc pages"
    texts = page_texts()
    assert len(texts) == count
    images_on = {
        int(line.split()[0]) for line in _run("pdfimages", "-list", str(PDF)).splitlines()[2:]
    }
    # The running page number alone does not make a page non-blank.
    blank = [
        i
        for i, t in enumerate(texts, start=1)
        if not re.sub(rf"\b{i}\b", "", t).strip() and i not in images_on
    ]
    assert blank == [], f"blank pages: {blank}"


def test_subset_toc_keeps_the_book_pages_and_the_first_chapters() -> None:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    small = build_pdf.subset_toc(toc, 2)
    files = list(build_pdf.toc_entries(small))
    numbered = [f for p in small["parts"] if p.get("numbered") for f in build_pdf.toc_entries(p)]
    assert len(numbered) == 2
    unnumbered = [
        f for p in toc["parts"] if not p.get("numbered") for f in build_pdf.toc_entries(p)
    ]
    assert set(unnumbered) <= set(files)
    assert files[0] == toc["root"]
    captions = build_pdf.part_captions(toc)
    assert list(captions.values()) == [p["caption"] for p in toc["parts"]]


def test_the_rendered_book_offers_the_pdf() -> None:
    """The intro page links to the copy of the PDF that ``make pdf`` puts beside the HTML book."""
    _need_pdf()
    intro = ROOT / "_build" / "html" / "book" / "intro.html"
    if not intro.is_file():
        pytest.skip(f"{intro} is not built (make book)")
    links = re.findall(r'href="([^"]+\.pdf)"', intro.read_text(encoding="utf-8"))
    assert links, "the intro page has no link to the PDF"
    for link in links:
        target = (intro.parent / link).resolve()
        assert target.is_file(), f"the intro's link {link} goes to {target}, which is missing"
        assert target.read_bytes() == PDF.read_bytes(), f"{target} is not the PDF just built"
    # The PDF itself leaves the paragraph out (it would link to itself by a relative path).
    assert not any(".pdf" in f["text"] and f["link"] for f in fragments()), (
        "the PDF links to a .pdf file"
    )
