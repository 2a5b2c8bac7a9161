"""Open the built book in headless Chromium and check what a reader would see.

For every page in ``_toc.yml`` (built into ``_build/html`` by ``make book``) this test loads the
page from a server on 127.0.0.1 and checks, through Playwright driving the system Chromium, that

* the page loads (HTTP 200) and no request fails or gets an HTTP error;
* **no request leaves the machine**: every URL is on the local server (or ``data:``/``blob:``),
  so MathJax, the widget manager and the theme's fonts all come from the build itself;
* the maths was typeset by MathJax: every ``.math`` element holds an ``mjx-container``, there is
  no TeX error (``mjx-merror``) and no raw ``$$``, ``\\(``, ``\\[``, inline ``$...$``, MyST
  role (``{doc}``, ``{ref}`` ...) or Markdown table left in the text (notebook outputs included);
  chapter pages and the notation page must contain maths at all;
* every image loaded with a non-zero natural size; chapter pages must contain a figure;
* every stored ipywidget view was rendered by the widget manager;
* the browser console shows no error and the page threw no exception;
* every exercise has a solution on its page, and every solution and hint (a sphinx-exercise
  ``{solution}`` or an ``{admonition}`` with ``:class: dropdown``) is collapsed when the page
  loads and opens when its toggle button is clicked (sphinx-togglebutton's markup).

``test_every_exercise_has_a_collapsed_solution`` checks the notebooks' sources for the same
structure without a browser: a label, a hint and a gated, collapsed solution per exercise.

It is skipped, with the reason, only when ``_build/html`` or Chromium is missing -- and
``make test`` sets ``BOOK_RENDER_REQUIRED=1``, which turns those skips into failures.
A screenshot of each page is written to ``_build/render-screenshots/`` for people to look at.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "render-screenshots"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
REQUIRED = os.environ.get("BOOK_RENDER_REQUIRED", "") not in ("", "0")
PAGE_TIMEOUT = 60.0  # seconds for one page to load, typeset and render its widgets

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


def _toc_pages() -> list[str]:
    """Every page of the book, as the toc names it (without suffix)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    pages: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("root", "file") and isinstance(value, str):
                    pages.append(value.removesuffix(".ipynb").removesuffix(".md"))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return pages


def _chromium() -> str | None:
    for candidate in CHROMIUM_CANDIDATES:
        path = shutil.which(candidate)
        if path:
            return path
    return None


def _skip(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (BOOK_RENDER_REQUIRED is set, so this is an error)")
    pytest.skip(reason)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


@pytest.fixture(scope="module")
def server():
    """Serve _build/html on 127.0.0.1 (an ephemeral port), as a static host would."""
    if not (BUILD / "index.html").is_file():
        _skip(f"{BUILD} has no index.html: build the book first (make book)")
    handler = functools.partial(_QuietHandler, directory=str(BUILD))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, the system's own (Playwright downloads no browser here)."""
    chromium = _chromium()
    if chromium is None:
        _skip("Chromium is not installed (apt-get install -y chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        yield browser
        browser.close()


# What the page reports once it has settled: maths, images, widgets, leftover TeX.
PAGE_STATE_JS = r"""
(() => {
  const main = document.querySelector('main') || document.body;
  const mathNodes = [...document.querySelectorAll('.math')];
  const untypeset = mathNodes.filter(n => !n.querySelector('mjx-container'))
                             .map(n => n.textContent.trim().slice(0, 80));
  const imgs = [...main.querySelectorAll('img')];
  const badImgs = imgs.filter(i => !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0))
                      .map(i => i.getAttribute('src'));
  // Text a reader sees, without code, outputs and scripts (which may legitimately hold TeX).
  const clone = main.cloneNode(true);
  clone.querySelectorAll('pre, code, script, style, mjx-container, .math, textarea')
       .forEach(n => n.remove());
  const text = clone.textContent;
  const rawTex = ['$$', '\\(', '\\[', '\\begin{'].filter(s => text.includes(s));
  // Inline maths, a MyST role or a Markdown table left as text: what a `display(Markdown(...))`
  // output shows when it is rendered as plain CommonMark (the roles' code spans are gone with the
  // code above; a table's |---| row is typeset as dashes).
  const rawInline = (text.match(/\$[^$\s][^$\n]{0,200}?\$/g) || []).slice(0, 5);
  const rawRoles = (text.match(/\{(doc|ref|numref|cite|term|math|eq)\}/g) || []).slice(0, 5);
  const rawTables = (text.match(/\|\s*[-\u2013\u2014:]+\s*\|/g) || []).slice(0, 5);
  const views = document.querySelectorAll(
      'script[type="application/vnd.jupyter.widget-view+json"]').length;
  const rendered = [...document.querySelectorAll('.widget-subarea')]
                       .filter(n => n.querySelector('.jupyter-widgets')).length;
  return {
    title: document.title,
    mathNodes: mathNodes.length,
    mjx: document.querySelectorAll('mjx-container').length,
    mjxErrors: document.querySelectorAll('mjx-merror').length,
    untypeset, images: imgs.length, badImgs, rawTex, rawInline, rawRoles, rawTables,
    views, rendered,
  };
})()
"""

# Every collapsible box of the page (solutions and hints): is it collapsed after the page has
# loaded, and does clicking its toggle button open it?  sphinx-togglebutton turns an admonition
# with the class `dropdown` into a `toggle` box, adds a button to its title and hides everything
# after the title (class `toggle-hidden`: height 0, visibility hidden) until the button is clicked.
TOGGLES_JS = r"""
(async () => {
  const visible = el => getComputedStyle(el).visibility !== 'hidden'
                         && el.getBoundingClientRect().height > 0;
  const boxes = [...document.querySelectorAll('main .admonition.dropdown')];
  const report = [];
  for (const box of boxes) {
    const title = box.querySelector(':scope > .admonition-title');
    const body = [...box.children].filter(c => c !== title);
    const button = title ? title.querySelector('button.toggle-button') : null;
    const entry = {
      title: title ? title.textContent.trim().slice(0, 80) : '(no title)',
      solution: box.classList.contains('solution'),
      hasButton: !!button,
      collapsed: box.classList.contains('toggle-hidden') && body.length > 0
                 && !body.some(visible),
    };
    if (button) {
      button.scrollIntoView();
      button.click();
      await new Promise(r => setTimeout(r, 50));
      entry.opened = !box.classList.contains('toggle-hidden') && body.length > 0
                     && body.every(visible);
      button.click();  // fold it again, as the reader found it
    }
    report.push(entry);
  }
  const exercises = [...document.querySelectorAll('main .exercise[id]')].map(e => e.id);
  const solved = [...document.querySelectorAll('main .solution > .admonition-title a[href^="#"]')]
                     .map(a => a.getAttribute('href').slice(1));
  return {report, exercises, unsolved: exercises.filter(id => !solved.includes(id))};
})()
"""

# Resolves when MathJax has finished its first typesetting pass (or there is no MathJax).
MATHJAX_DONE_JS = """
(window.MathJax && MathJax.startup && MathJax.startup.promise)
  ? MathJax.startup.promise.then(() => true) : Promise.resolve(false)
"""


def _is_local(url: str, base: str) -> bool:
    return url.startswith((base, "data:", "blob:", "about:"))


# Every stored widget view has been rendered by the widget manager (or there are none).
WIDGETS_RENDERED_JS = """
document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length
  <= [...document.querySelectorAll('.widget-subarea')]
       .filter(n => n.querySelector('.jupyter-widgets')).length
"""


def _load(page: Any, url: str, base: str) -> dict[str, Any]:
    """Navigate, let the page settle, and return its state plus what went wrong on the way."""
    requests, remote, failed, http_errors, console, exceptions = [], [], [], [], [], []

    def on_request(request: Any) -> None:
        requests.append(request.url)
        if not _is_local(request.url, base):
            remote.append(request.url)

    def on_failed(request: Any) -> None:
        if request.failure != "net::ERR_ABORTED":  # a request the page itself cancelled
            failed.append(f"{request.url}: {request.failure}")

    def on_response(response: Any) -> None:
        if response.status >= 400:
            http_errors.append(f"{response.url}: HTTP {response.status}")

    page.on("request", on_request)
    page.on("requestfailed", on_failed)
    page.on("response", on_response)
    # Console API errors and the browser's own error log entries (failed loads, CSP, ...).
    page.on("console", lambda m: m.type in ("error", "assert") and console.append(m.text))
    page.on("pageerror", lambda error: exceptions.append(str(error)))

    response = page.goto(url, wait_until="load")
    assert response is not None and response.ok, f"{url}: HTTP {response and response.status}"
    has_mathjax = page.evaluate(MATHJAX_DONE_JS)
    # Widgets render asynchronously after require.js has loaded the manager; the check below
    # reports the ones that never did.
    try:
        page.wait_for_function(WIDGETS_RENDERED_JS, timeout=30_000)
    except sync_api.TimeoutError:
        pass
    # Let late requests (fonts, lazily loaded MathJax components) show up.
    page.wait_for_load_state("networkidle")
    state = page.evaluate(PAGE_STATE_JS)
    state["has_mathjax"] = has_mathjax
    state.update(
        requests=requests,
        remote=remote,
        failed=failed,
        http_errors=http_errors,
        console=console,
        exceptions=exceptions,
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    name = url[len(base) :].replace("/", "__") or "index.html"
    page.screenshot(path=SCREENSHOTS / f"{name}.png")
    return state


PAGES = _toc_pages()


@pytest.mark.parametrize("docname", PAGES)
def test_page_renders_offline(server: str, browser: Any, docname: str) -> None:
    html = BUILD / f"{docname}.html"
    assert html.is_file(), f"{docname} is in _toc.yml but {html} was not built"
    # A fresh context per page: no cache, so every load really fetches (and reports) its resources.
    context = browser.new_context(viewport={"width": 1280, "height": 1600})
    context.set_default_timeout(PAGE_TIMEOUT * 1000)
    page = context.new_page()
    try:
        _check_page(page, server, docname)
    finally:
        context.close()


def _check_page(page: Any, server: str, docname: str) -> None:
    state = _load(page, server + f"{docname}.html", server)
    is_chapter = docname.startswith("notebooks/")

    assert state["remote"] == [], f"requests left the machine: {state['remote']}"
    assert state["failed"] == [], f"requests failed: {state['failed']}"
    assert state["http_errors"] == [], f"HTTP errors: {state['http_errors']}"
    assert state["exceptions"] == [], f"uncaught exceptions: {state['exceptions']}"
    assert state["console"] == [], f"console errors: {state['console']}"

    if state["mathNodes"]:
        assert state["has_mathjax"], "the page has maths but MathJax was not loaded"
    assert state["untypeset"] == [], f"maths not typeset by MathJax: {state['untypeset']}"
    assert state["mjxErrors"] == 0, f"{state['mjxErrors']} TeX errors (mjx-merror) on the page"
    assert state["rawTex"] == [], f"raw TeX delimiters left in the text: {state['rawTex']}"
    assert state["rawInline"] == [], f"inline maths left as text: {state['rawInline']}"
    assert state["rawRoles"] == [], f"MyST roles left as text: {state['rawRoles']}"
    assert state["rawTables"] == [], f"Markdown tables left as text: {state['rawTables']}"
    if is_chapter or docname.endswith("notation"):
        assert state["mjx"] > 0, "no typeset maths (mjx-container) on a page that has maths"

    assert state["badImgs"] == [], f"images that did not load: {state['badImgs']}"
    if is_chapter:
        assert state["images"] > 0, "a chapter without any figure"
    assert state["rendered"] >= state["views"], (
        f"{state['views']} stored widget views but only {state['rendered']} rendered"
    )

    toggles = page.evaluate(TOGGLES_JS)
    assert toggles["unsolved"] == [], f"exercises without a solution: {toggles['unsolved']}"
    boxes = toggles["report"]
    if toggles["exercises"]:
        assert any(b["solution"] for b in boxes), "exercises on the page but no solution box"
    assert [b["title"] for b in boxes if not b["hasButton"]] == [], "boxes without a toggle button"
    assert [b["title"] for b in boxes if not b["collapsed"]] == [], (
        "solutions or hints open when the page loads"
    )
    assert [b["title"] for b in boxes if not b.get("opened")] == [], (
        "solutions or hints that do not open when their toggle is clicked"
    )


EXERCISE_RE = re.compile(r"```\{exercise\}[^\n]*\n:label: (?P<label>[\w-]+)")
SOLUTION_START_RE = re.compile(
    r"```\{solution-start\} (?P<label>[\w-]+)\n(?P<options>(?::[^\n]*\n)*)"
)
HINT_RE = re.compile(r"```\{admonition\} Hint\n:class: dropdown\n")


def test_every_exercise_has_a_collapsed_solution() -> None:
    """In the sources: each exercise has a label, a hint and one gated solution folded by default.

    The solution is written in the gated form (``{solution-start}`` ... ``{solution-end}``) so
    that executed code cells, which nbval runs, can sit inside it; ``:class: dropdown`` folds it.
    """
    problems = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        markdown = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
        text = "\n".join(markdown)
        labels = [m["label"] for m in EXERCISE_RE.finditer(text)]
        if text.count("```{exercise}") != len(labels):
            problems.append(f"{path.name}: an exercise without a :label:")
        starts = {m["label"]: m["options"] for m in SOLUTION_START_RE.finditer(text)}
        if text.count("```{solution-start}") != len(starts):
            problems.append(f"{path.name}: two solutions for one exercise, or one without a label")
        if text.count("```{solution-start}") != text.count("```{solution-end}"):
            problems.append(f"{path.name}: solution-start and solution-end do not pair up")
        for label in labels:
            if label not in starts:
                problems.append(f"{path.name}: exercise {label} has no solution")
            elif ":class: dropdown" not in starts[label]:
                problems.append(f"{path.name}: the solution of {label} is not collapsed")
        for block in markdown:
            for piece in block.split("```{exercise}")[1:]:
                if not HINT_RE.search(piece):
                    label = EXERCISE_RE.search("```{exercise}" + piece)
                    problems.append(f"{path.name}: exercise {label and label['label']} has no hint")
        unknown = set(starts) - set(labels)
        if unknown:
            problems.append(f"{path.name}: solutions of unknown exercises {sorted(unknown)}")
    assert problems == [], "\n".join(problems)


def test_chapter_numbers_as_rendered() -> None:
    """``notebooks/NN_*`` is chapter NN in its page title and in the sidebar; ``NNx_*`` is NN.k.

    The numbers come from the toc's numbered parts (tools/check_toc.py checks the toc and the
    prose); this reads what the build made of them, on the pages a reader opens.
    """
    if not (BUILD / "index.html").is_file():
        _skip(f"{BUILD} has no index.html: build the book first (make book)")
    sidebar = (BUILD / "book" / "intro.html").read_text(encoding="utf-8")
    wrong = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        stem, nn = path.stem, int(path.stem[:2])
        want = rf"{nn}\. " if stem[2] == "_" else rf"{nn}\.\d+\. "  # chapter NN / section NN.k
        html = (BUILD / "notebooks" / f"{stem}.html").read_text(encoding="utf-8")
        title = re.search(r"<title>(.*?)</title>", html, re.DOTALL)
        link = re.search(rf'href="\.\./notebooks/{stem}\.html">(.*?)</a>', sidebar, re.DOTALL)
        for where, found in (("page title", title), ("sidebar", link)):
            text = re.sub(r"<[^>]+>", "", found[1]).strip() if found else "(missing)"
            if not re.match(want, text):
                wrong.append(f"{stem}: {where} {text[:60]!r}")
    assert wrong == [], "chapter numbers that do not match the file names:\n" + "\n".join(wrong)


def test_every_chapter_is_checked() -> None:
    """The parametrisation above covers every notebook: none can slip out of the render test."""
    notebooks = {f"notebooks/{p.stem}" for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert notebooks <= set(PAGES), f"notebooks not in _toc.yml: {sorted(notebooks - set(PAGES))}"


def test_local_url_filter() -> None:
    """The request filter itself: only the local server and inline data count as local."""
    base = "http://127.0.0.1:8000/"
    assert _is_local(base + "_static/vendor/mathjax/tex-svg.js", base)
    assert _is_local("data:font/woff2;base64,AAAA", base)
    assert not _is_local("https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-svg.js", base)
    assert not _is_local("http://127.0.0.1:9999/x.js", base)
