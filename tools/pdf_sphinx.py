"""Sphinx extension for the PDF build only (``tools/build_pdf.py`` adds it; ``make book`` does not).

The PDF is printed from Jupyter Book's single-page HTML build (``singlehtml``). Sphinx gives a
translator the node handlers registered for its builder's *name* and falls back to those of its
*format* only when the name has none; sphinx-exercise registers ``singlehtml`` handlers, so the
``html`` handlers of every other extension (myst-nb's hidden code cells, sphinx-design ...) would
be lost. This extension copies the missing ``html`` handlers into ``singlehtml``.

myst-nb adds a notebook's stored widget state and the widget manager's scripts to that notebook's
own HTML page; the single page is the root document's, so this extension adds those of every
page in the book to it.
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx


def _inherit_html_handlers(app: Sphinx) -> None:
    handlers = app.registry.translation_handlers
    single = handlers.setdefault("singlehtml", {})
    for name, pair in handlers.get("html", {}).items():
        single.setdefault(name, pair)


def _add_every_page_js(app: Sphinx, pagename: str, *args: Any, **kwargs: Any) -> None:
    if app.builder.name != "singlehtml" or pagename != app.config.root_doc:
        return
    from myst_nb.sphinx_ import NbMetadataCollector

    seen: set[str] = set()
    for docname in sorted(app.env.found_docs):
        if docname == pagename:
            continue  # myst-nb adds the root page's own files
        for path, options in NbMetadataCollector.get_js_files(app.env, docname).values():
            if path is not None and path in seen:
                continue
            if path is not None:
                seen.add(path)
            app.add_js_file(path, **options)


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("builder-inited", _inherit_html_handlers)
    app.connect("html-page-context", _add_every_page_js)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
