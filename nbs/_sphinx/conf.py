"""Sphinx configuration of the shape_nb documentation site (built by nbs/_sphinx/build.py, see its docstring).

The site works offline and loads nothing from outside: the theme (furo) ships its CSS, JavaScript and uses the
system fonts; plotly.js and MathJax 3 come from `_static/vendor` (copied from installed packages by build.py);
ipywidgets state is not embedded (viewers show a static snapshot of their figure instead), and the CDN MathJax
tag that plotly adds to every figure is removed. Search is Sphinx's own (a local `searchindex.js`).
"""
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

project = "shape_nb"
author = "shape_nb developers"
copyright = "2026 onwards, shape_nb developers"
try:
    import shape_nb
    release = version = shape_nb.__version__
except Exception:  # noqa: BLE001 - the site still builds; the notebooks will show the import error
    release = version = ""

extensions = ["myst_nb", "sphinx.ext.mathjax", "sphinx_copybutton"]
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "jupyter_execute"]
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header", "misc.highlighting_failure"]

# --- notebooks (myst-nb): build.py executes them beforehand into the jupyter-cache; here they are only read
nb_execution_mode = os.environ.get("SHAPE_NB_DOCS_EXECUTE", "cache")
nb_execution_cache_path = os.environ.get("SHAPE_NB_DOCS_CACHE", str(ROOT / "_docs" / ".jupyter_cache"))
_executed = {s for s in os.environ.get("SHAPE_NB_DOCS_EXECUTED", "").split(",") if s}
nb_execution_excludepatterns = ["tutorials/*"] + [p.name for p in (ROOT / "nbs").glob("*.ipynb")
                                                  if p.name not in _executed]   # shown as they are
nb_execution_timeout = 600
nb_execution_raise_on_error = False      # a failing cell shows its traceback on the page; the build goes on
nb_execution_show_tb = True
nb_merge_streams = True
nb_ipywidgets_js = {}                    # no require.js / html-manager from a CDN: widgets show their html snapshot
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None),
                              ("html", "application/vnd.jupyter.widget-state+json", None)]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_dmath_double_inline = True          # `$$ ... $$` inside a paragraph (as Jupyter renders it) is display math
myst_heading_anchors = 3

# --- API entries (Python-domain directives written by build.py from the export cells)
python_maximum_signature_line_length = 88     # longer signatures: one parameter per line
toc_object_entries_show_parents = "hide"      # the page contents list `fit`, under its class
add_module_names = False

# --- HTML: furo (maintained, no CDN assets, Sphinx's own search), copy buttons on the code
html_theme = "furo"
html_title = "shape_nb"
html_static_path = []              # <srcdir>/_static (staged by build.py: custom.css, vendor/), added below
html_css_files = ["custom.css"]
html_theme_options = {"navigation_with_keys": True, "top_of_page_buttons": [], "sidebar_hide_name": False}
mathjax_path = "vendor/mathjax/tex-svg.js"     # MathJax 3, TeX in, SVG out: one file, no web fonts to fetch
html_copy_source = False
html_show_sourcelink = False
html_show_search_summary = False      # result snippets would be fetched from the pages: not possible from file://
copybutton_selector = ", ".join(f"div.highlight-{lang} div.highlight pre"
                                for lang in ("ipython3", "python", "bash", "console", "shell", "default"))
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True

PLOTLY_PAGE = "plotly-graph-div"
_CDN_MATHJAX = re.compile(r'<script[^>]*src="https://cdnjs\.cloudflare\.com/ajax/libs/mathjax/[^"]*"[^>]*></script>')


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs
    return get_plotlyjs()


def _drop_widget_state(app, pagename, templatename, context, doctree):
    """Executed notebooks carry the ipywidgets state (megabytes: each FigureWidget holds plotly's widget bundle);
    with no widget manager on the page it is dead weight."""
    state = "application/vnd.jupyter.widget-state+json"
    if "script_files" in context:
        context["script_files"] = [js for js in context["script_files"]
                                   if getattr(js, "attributes", {}).get("type") != state]


def _offline_page(app, pagename, templatename, context, doctree):
    """Pages with plotly figures load the local plotly.js once, at the top of the page body (the theme loads its
    scripts at the end of the page, after the figures' inline scripts), instead of inline copies and CDN MathJax."""
    body = context.get("body", "")
    if PLOTLY_PAGE not in body:
        return
    body = _CDN_MATHJAX.sub("", body)
    js = _plotly_js()
    if js in body:                           # the notebook renderer's one-off inline copy (4.8 MB) is not needed
        body = body.replace(js, "")
    src = context["pathto"]("_static/vendor/plotly.min.js", 1)
    context["body"] = f'<script src="{src}"></script>\n' + body


def _mark_api_entries(app, doctree):
    """Python-domain entries get the CSS class `api-entry`, and their anchor is the qualified name on the page
    (`#tps_fit`, `#LandmarkDiscovery.fit`); the full dotted name (`#shape_nb.tps.tps_fit`) stays as a second id."""
    from sphinx import addnodes
    for node in doctree.findall(addnodes.desc):
        if node.get("domain") != "py": continue
        node["classes"].append("api-entry")
        for sig in node.findall(addnodes.desc_signature):
            short = sig.get("fullname")
            if short and short not in sig["ids"] and sig["ids"]: sig["ids"].insert(0, short)


def _static_path(app, config):
    config.html_static_path.append(str(Path(app.srcdir) / "_static"))


def setup(app):
    app.connect("config-inited", _static_path)
    app.connect("doctree-read", _mark_api_entries, priority=400)   # before the page contents are collected
    app.connect("html-page-context", _offline_page)
    app.connect("html-page-context", _drop_widget_state, priority=900)   # after myst-nb has added the page's scripts
    return {"parallel_read_safe": True, "parallel_write_safe": True}
