"""Build the book as one PDF, offline: the single-page HTML build printed by headless Chromium.

    python tools/build_pdf.py [--out _build/pdf/ccnet-edu.pdf] [--chapters N]

1. ``jupyter-book build --builder singlehtml`` renders every page of ``_toc.yml`` from the
   notebooks' stored outputs (``execute_notebooks: "off"``) into one HTML page, with a config
   derived from ``_config.yml`` that adds ``tools/pdf_sphinx.py``. ``--chapters N`` keeps the
   book's own pages but only the first N chapters (the quick build that ``make test`` checks).
2. The page is served on 127.0.0.1 and opened in the system Chromium through Playwright. Every
   request that would leave the machine is refused and fails the build. Once MathJax has typeset
   every formula and the widget manager has drawn the stored widgets, the page is prepared for
   print (``tools/pdf_print.css``; collapsed solutions, hints and hidden code opened; links
   between the book's pages turned into links within the page) and a title page and a table of
   contents are put in front.
3. Chromium has no page numbers for a table of contents, so the page is printed twice: the first
   print's named destinations (``pdfinfo -dests``, one per link target) give the page of every
   heading the contents link to; those numbers are written into the contents, which keep their
   layout (the first print reserved the room), and the page is printed again. The two prints
   must agree on every page number, or the build fails.

The PDF has a document outline (bookmarks), clickable internal links and page numbers in the
footer. Needs the book's JavaScript (``tools/fetch_book_assets.sh``), Chromium and poppler-utils.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
LOAD_TIMEOUT_MS = 120_000
PRINTED_PAGE = "_pdf_print.html"
MAX_PRINTS = 4  # a table of contents that still moves after this many prints is an error

sys.path.insert(0, str(ROOT))
from ccnet_edu._checks import OneLineArgumentParser, cli_int, cli_writable  # noqa: E402
from ccnet_edu._io import atomic_write_bytes, atomic_write_text  # noqa: E402

sys.path.insert(0, str(TOOLS))
from check_toc import toc_entries  # noqa: E402  (the toc's files, as check_toc reads them)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def subset_toc(toc: dict[str, Any], chapters: int) -> dict[str, Any]:
    """The toc with every unnumbered part but only the first ``chapters`` numbered chapters."""
    kept = 0
    parts = []
    for part in toc["parts"]:
        if not part.get("numbered"):
            parts.append(part)
            continue
        entries = []
        for chapter in part["chapters"]:
            if kept < chapters:
                entries.append(chapter)
                kept += 1
        if entries:
            parts.append({**part, "chapters": entries})
    return {**toc, "parts": parts}


def part_captions(toc: dict[str, Any]) -> dict[str, str]:
    """Docname of the first page of each part -> the part's caption."""
    captions = {}
    for part in toc.get("parts", []):
        files = list(toc_entries(part.get("chapters", [])))
        if files and part.get("caption"):
            docname = files[0].removesuffix(".ipynb").removesuffix(".md")
            captions[docname] = part["caption"]
    return captions


def build_singlehtml(work: Path, toc: dict[str, Any], strict: bool) -> Path:
    """Render the toc's pages into one HTML page; return the folder it was written to."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    sphinx = config.setdefault("sphinx", {})
    sphinx.setdefault("local_extensions", {})["pdf_sphinx"] = str(TOOLS)
    # `sphinx.config.extensions` replaces Jupyter Book's list, local extensions included.
    extensions = sphinx.setdefault("config", {}).setdefault("extensions", [])
    if "pdf_sphinx" not in extensions:
        extensions.append("pdf_sphinx")
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(work / "_config.yml", yaml.safe_dump(config, sort_keys=False))
    atomic_write_text(work / "_toc.yml", yaml.safe_dump(toc, sort_keys=False))
    jb = Path(sys.executable).with_name("jupyter-book")
    # --all: a fresh environment, so that a build of another toc (--chapters) leaves nothing behind.
    cmd = [
        str(jb),
        "build",
        str(ROOT),
        "--builder",
        "singlehtml",
        "--path-output",
        str(work),
        "--all",
    ]
    cmd += ["--config", str(work / "_config.yml"), "--toc", str(work / "_toc.yml")]
    cmd += ["-W", "--keep-going"] if strict else []
    log = work / "singlehtml.log"
    with log.open("w", encoding="utf-8") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    warnings = [line for line in log.read_text(encoding="utf-8").splitlines() if "WARNING" in line]
    if rc != 0 or (strict and warnings):
        print("\n".join(warnings[:20]), file=sys.stderr)
        _fail(f"the single-page HTML build failed (exit {rc}); its log is {log}")
    return work / "_build" / "singlehtml"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


MATHJAX_DONE_JS = """
(window.MathJax && MathJax.startup && MathJax.startup.promise)
  ? MathJax.startup.promise.then(() => true) : Promise.resolve(false)
"""

# Every stored widget view has been drawn by the widget manager and every image has loaded.
SETTLED_JS = """
document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length
  <= [...document.querySelectorAll('.widget-subarea')]
       .filter(n => n.querySelector('.jupyter-widgets')).length
  && [...document.images].every(i => i.complete)
"""

# Prepare the page for print: open what is folded, make the links between the book's pages point
# within this page, and put a title page and the table of contents in front of the article.
PREPARE_JS = r"""
({css, captions, title, author, note, base, self}) => {
  const style = document.createElement('style');
  style.textContent = css;
  document.head.appendChild(style);

  // Collapsed solutions and hints (sphinx-togglebutton) and hidden code (<details>) open.
  document.querySelectorAll('.toggle-hidden').forEach(n => n.classList.remove('toggle-hidden'));
  document.querySelectorAll('details').forEach(d => { d.open = true; });

  // Sphinx writes links within the single page as "<root page>.html#id", relative to the root.
  const root = new URL(base);
  let rewritten = 0;
  for (const a of document.querySelectorAll('a[href]')) {
    const raw = a.getAttribute('href');
    if (raw.startsWith('#') || /^[a-z]+:/i.test(raw)) continue;
    const url = new URL(raw, root);
    if (url.pathname === self && url.hash) {
      a.setAttribute('href', url.hash);
      rewritten++;
    }
  }

  // The headings' own permalinks (hidden in print) would make every section a link target.
  document.querySelectorAll('a.headerlink').forEach(a => a.remove());
  // Each page numbers its own ids ("id1", "id2", ...), so in the single page a bibliography
  // entry can share its id with a citation on another page: give the entries ids of their own.
  let citations = 0;
  for (const entry of document.querySelectorAll('.citation[id]')) {
    const old = entry.id;
    entry.id = 'cite-' + old;
    for (const a of document.querySelectorAll(`.bibtex-citation a[href="#${CSS.escape(old)}"]`)) {
      a.setAttribute('href', '#' + entry.id);
      citations++;
    }
  }
  // Links in the printed text whose target id is still not unique (the browser takes the first).
  const ambiguous = [...document.querySelectorAll('article.bd-article a[href^="#"]')]
    .map(a => decodeURIComponent(a.getAttribute('href').slice(1)))
    .filter(id => id && document.querySelectorAll(`[id="${CSS.escape(id)}"]`).length > 1);

  const article = document.querySelector('article.bd-article');
  // Title page.
  const titlePage = document.createElement('div');
  titlePage.id = 'pdf-title';
  titlePage.innerHTML = '<div class="pdf-title-main"></div><div class="pdf-title-author"></div>'
                      + '<div class="pdf-title-note"></div>';
  titlePage.children[0].textContent = title;
  titlePage.children[1].textContent = author;
  titlePage.children[2].textContent = note;

  // Contents: the root page, every page of the toc (its first heading) and the numbered
  // sections of each, with the parts' captions; page numbers are filled in after a first print.
  const toc = document.createElement('nav');
  toc.id = 'pdf-toc';
  toc.innerHTML = '<h2>Contents</h2>';
  const entries = [];
  const unique = id => id && document.querySelectorAll(`[id="${CSS.escape(id)}"]`).length === 1;
  const addRow = (section, heading, level) => {
    // Pages share section ids ("summary", "exercises"): where the section's id is not unique,
    // link to a fresh id on the heading instead.
    const target = unique(section.id) ? section : heading;
    if (target === heading) heading.id = 'pdf-toc-' + entries.length;
    const row = document.createElement('div');
    row.className = 'toc-row toc-l' + level;
    const a = document.createElement('a');
    a.href = '#' + target.id;
    // The heading's own content, typeset maths included (its text would read "N2" for N^2).
    for (const node of heading.childNodes) a.appendChild(node.cloneNode(true));
    const leader = document.createElement('span');
    leader.className = 'toc-leader';
    const page = document.createElement('span');
    page.className = 'toc-page';
    page.textContent = '000';
    row.append(a, leader, page);
    toc.appendChild(row);
    entries.push(target.id);
  };
  const first = article.querySelector(':scope > section');
  addRow(first, first.querySelector('h1'), 2);
  for (const marker of article.querySelectorAll('span[id^="document-"]')) {
    const section = marker.nextElementSibling;
    if (!section || section.tagName !== 'SECTION') continue;
    const docname = marker.id.slice('document-'.length);
    if (captions[docname]) {
      const part = document.createElement('div');
      part.className = 'toc-part';
      part.textContent = captions[docname];
      toc.appendChild(part);
    }
    const heading = section.querySelector(':scope > h2, :scope > h3');
    addRow(section, heading, heading.tagName === 'H2' ? 2 : 3);
    if (heading.tagName !== 'H2') continue;  // a section page (NN.k) lists no subsections
    for (const sub of section.querySelectorAll(':scope > section')) {
      const h = sub.querySelector(':scope > h3, :scope > h4');
      if (h && h.querySelector('.section-number')) addRow(sub, h, 3);
    }
  }
  article.prepend(titlePage, toc);
  return {rewritten, citations, ambiguous: [...new Set(ambiguous)], entries};
}
"""

FILL_PAGES_JS = """
(pages) => {
  const missing = [];
  for (const row of document.querySelectorAll('#pdf-toc .toc-row')) {
    const id = decodeURIComponent(row.querySelector('a').getAttribute('href').slice(1));
    if (id in pages) row.querySelector('.toc-page').textContent = String(pages[id]);
    else missing.push(id);
  }
  return missing;
}
"""

FOOTER = (
    '<div style="font-size:8pt;width:100%;text-align:center;color:#555;">'
    '<span class="pageNumber"></span></div>'
)

DEST_RE = re.compile(r'^\s*(\d+)\s+\[.*\]\s+"(.*)"\s*$')


def named_destinations(pdf: Path) -> dict[str, int]:
    """Named destination -> page number (1-based), read with poppler's ``pdfinfo -dests``."""
    out = subprocess.run(
        ["pdfinfo", "-dests", str(pdf)], capture_output=True, text=True, check=True
    ).stdout
    dests = {}
    for line in out.splitlines():
        m = DEST_RE.match(line)
        if m:
            dests[m[2]] = int(m[1])
    return dests


def _chromium() -> str:
    for candidate in CHROMIUM_CANDIDATES:
        path = shutil.which(candidate)
        if path:
            return path
    _fail("Chromium is not installed (apt-get install -y chromium)")
    raise AssertionError


def print_book(html_dir: Path, pdf: Path, captions: dict[str, str]) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    css = (TOOLS / "pdf_print.css").read_text(encoding="utf-8")
    # The single page is the root document's file (index.html only redirects to it), but Sphinx
    # writes its links relative to the output folder: print a copy that sits there.
    redirect = (html_dir / "index.html").read_text(encoding="utf-8")
    page_path = re.search(r'url=([^"#]+)"', redirect)[1]
    atomic_write_bytes(html_dir / PRINTED_PAGE, (html_dir / page_path).read_bytes())
    # The theme's search script loads the search index, which the single-page builder does not
    # write; an empty one keeps the console clean (nothing is searched in print).
    if not (html_dir / "searchindex.js").exists():
        atomic_write_text(html_dir / "searchindex.js", "Search.setIndex({});\n")
    remote: list[str] = []
    console: list[str] = []
    tmp = pdf.with_suffix(".pass.pdf")
    with serve(html_dir) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=_chromium(),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        context = browser.new_context(viewport={"width": 1100, "height": 1400})
        context.set_default_timeout(LOAD_TIMEOUT_MS)

        def route(route: Any) -> None:
            url = route.request.url
            if url.startswith((base, "data:", "blob:", "about:")):
                route.continue_()
            else:
                remote.append(url)
                route.abort()

        context.route("**/*", route)
        page = context.new_page()
        page.on("console", lambda msg: msg.type == "error" and console.append(msg.text))
        page.on("pageerror", lambda error: console.append(str(error)))
        page.on(
            "response",
            lambda r: r.status >= 400 and console.append(f"HTTP {r.status}: {r.url}"),
        )
        t0 = time.perf_counter()
        page.goto(base + PRINTED_PAGE, wait_until="load")
        page.evaluate(MATHJAX_DONE_JS)
        page.wait_for_function(SETTLED_JS)
        page.wait_for_load_state("networkidle")
        loaded = time.perf_counter() - t0
        stats = page.evaluate(
            """() => ({math: document.querySelectorAll('.math').length,
                       typeset: document.querySelectorAll('.math mjx-container').length,
                       errors: document.querySelectorAll('mjx-merror').length})"""
        )
        if stats["typeset"] < stats["math"] or stats["errors"]:
            _fail(
                f"MathJax typeset {stats['typeset']} of {stats['math']} formulas, "
                f"{stats['errors']} TeX errors"
            )
        prepared = page.evaluate(
            PREPARE_JS,
            {
                "css": css,
                "captions": captions,
                "title": config.get("title", ""),
                "author": config.get("author", ""),
                "note": "Printed from the book's sources and stored notebook outputs.",
                "base": base,
                "self": "/" + page_path,
            },
        )
        previous: dict[str, int] | None = None
        prints = 0
        while True:
            prints += 1
            page.pdf(
                path=str(tmp),
                prefer_css_page_size=True,
                print_background=True,
                display_header_footer=True,
                header_template="<span></span>",
                footer_template=FOOTER,
                outline=True,
            )
            dests = named_destinations(tmp)
            pages = {e: dests[e] for e in prepared["entries"] if e in dests}
            missing = sorted(set(prepared["entries"]) - set(pages))
            if missing:
                _fail(f"no named destination for contents entries {missing[:5]}")
            if pages == previous:
                break
            if prints >= MAX_PRINTS:
                _fail(f"the contents' page numbers still moved after {prints} prints")
            page.evaluate(FILL_PAGES_JS, pages)
            previous = pages
        browser.close()
    if remote:
        _fail(f"the book requested {len(remote)} remote URLs: {remote[:5]}")
    atomic_write_bytes(pdf, tmp.read_bytes())
    tmp.unlink()
    if prepared["ambiguous"]:
        console.append(f"links to ids that are not unique: {prepared['ambiguous'][:10]}")
    return {
        "load_s": loaded,
        "prints": prints,
        "console": console,
        **stats,
        "links_rewritten": prepared["rewritten"],
        "citation_links": prepared["citations"],
        "toc_entries": len(prepared["entries"]),
    }


def numbered_chapters(toc: dict[str, Any]) -> int:
    """How many numbered chapters the toc has (the most ``--chapters`` can ask for)."""
    return sum(len(part["chapters"]) for part in toc["parts"] if part.get("numbered"))


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "pdf" / "ccnet-edu.pdf")
    parser.add_argument(
        "--chapters",
        type=cli_int(1, 1000),
        default=None,
        help="only the first N numbered chapters (with the book's own pages)",
    )
    args = parser.parse_args(argv)
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    available = numbered_chapters(toc)
    if args.chapters is not None and args.chapters > available:
        parser.error(f"--chapters must be at most {available} (the book's numbered chapters)")
    # checked before the build starts: a path that cannot be written fails now, not minutes later
    cli_writable(parser, "--out", args.out)
    if not shutil.which("pdfinfo"):
        _fail("pdfinfo is missing (apt-get install -y poppler-utils)")
    if args.chapters is not None:
        toc = subset_toc(toc, args.chapters)
    out = args.out.resolve()
    work = out.parent / (out.stem + "-src")
    t0 = time.perf_counter()
    # A part of the book leaves links to the pages it omits unresolved: warnings there are
    # expected; the full book must build without any.
    html_dir = build_singlehtml(work, toc, strict=args.chapters is None)
    t1 = time.perf_counter()
    report = print_book(html_dir, out, part_captions(toc))
    t2 = time.perf_counter()
    for message in report.pop("console"):
        print(f"warning: browser console: {message[:200]}", file=sys.stderr)
    print(
        f"wrote {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}: "
        f"HTML {t1 - t0:.0f} s, print {t2 - t1:.0f} s ({report})"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    sys.exit(main())
