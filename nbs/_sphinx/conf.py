"""Sphinx configuration of the shape_nb documentation site (built by nbs/_sphinx/build.py, see its docstring).

The site works offline and loads nothing from outside: plotly.js and MathJax 3 come from `_static/vendor`
(copied from installed packages by build.py), ipywidgets state is not embedded (viewers show a static snapshot
of their figure instead), and the CDN MathJax tag that plotly adds to every figure is removed.
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
except Exception:  # noqa: BLE001 - the API pages will report the import error
    release = version = ""

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.mathjax"]
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "jupyter_execute"]
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header", "misc.highlighting_failure"]

# --- notebooks (myst-nb)
nb_execution_mode = os.environ.get("SHAPE_NB_DOCS_EXECUTE", "auto")   # run notebooks that have no outputs
_only = [s for s in os.environ.get("SHAPE_NB_DOCS_ONLY", "").split(",") if s]
nb_execution_excludepatterns = ["tutorials/*"]   # tutorials show their committed outputs
if _only:                                         # execute just these notebooks (the docs test)
    nb_execution_excludepatterns += [p.name for p in (ROOT / "nbs").glob("*.ipynb") if p.stem not in _only]
nb_execution_timeout = 600
nb_execution_raise_on_error = False      # a failing cell shows its traceback on the page; the build goes on
nb_execution_show_tb = True
nb_execution_cache_path = str(ROOT / "_docs" / ".jupyter_cache")
nb_merge_streams = True
nb_ipywidgets_js = {}                    # no require.js / html-manager from a CDN: widgets show their text/html snapshot
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None),
                              ("html", "application/vnd.jupyter.widget-state+json", None)]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

# --- API reference (autodoc of each module's __all__)
autodoc_default_options = {"members": True, "undoc-members": True, "member-order": "bysource", "show-inheritance": True}
autodoc_typehints = "description"
autodoc_preserve_defaults = True

# --- HTML
html_theme = "alabaster"
html_title = "shape_nb"
html_static_path = []              # <srcdir>/_static (staged by build.py: custom.css, vendor/), added below
html_css_files = ["custom.css"]
html_theme_options = {"description": "Statistical shape analysis from 2D/3D images, in PyTorch", "fixed_sidebar": True,
                      "page_width": "1180px", "sidebar_width": "230px", "show_relbars": True}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}
mathjax_path = "vendor/mathjax/tex-svg.js"     # MathJax 3, TeX in, SVG out: one file, no web fonts to fetch
html_copy_source = False
html_show_sourcelink = False

PLOTLY_PAGE = "plotly-graph-div"
_CDN_MATHJAX = re.compile(r'<script[^>]*src="https://cdnjs\.cloudflare\.com/ajax/libs/mathjax/[^"]*"[^>]*></script>')


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs
    return get_plotlyjs()


def _drop_widget_state(app, pagename, templatename, context, doctree):
    "Executed notebooks carry the ipywidgets state (megabytes: each FigureWidget holds plotly's widget bundle); with no widget manager on the page it is dead weight."
    if "script_files" in context:
        context["script_files"] = [js for js in context["script_files"]
                                   if getattr(js, "attributes", {}).get("type") != "application/vnd.jupyter.widget-state+json"]


def _offline_page(app, pagename, templatename, context, doctree):
    "Pages with plotly figures load the local plotly.js once (in <head>) instead of inline copies and CDN MathJax."
    body = context.get("body", "")
    if PLOTLY_PAGE not in body:
        return
    body = _CDN_MATHJAX.sub("", body)
    js = _plotly_js()
    if js in body:                           # the notebook renderer's one-off inline copy (4.8 MB) is not needed
        body = body.replace(js, "")
    context["body"] = body
    app.add_js_file("vendor/plotly.min.js", priority=200)


_LITERAL = re.compile(r"(``.+?``|`[^`]+`)")


def _rst_escape(text: str) -> str:
    "Docstrings are written in markdown: single-backtick code becomes an RST literal, stray * and | are escaped."
    out = []
    for i, part in enumerate(_LITERAL.split(text)):
        if i % 2:
            out.append(part if part.startswith("``") else f"``{part[1:-1]}``")
        else:
            part = part.replace("\\", "\\\\").replace("*", "\\*").replace("|", "\\|")
            out.append(re.sub(r"(\w)_(?=\W|$)", r"\1\\_", part))      # `mean_` is not a link target
    return "".join(out)


def _docstring(app, what, name, obj, options, lines):
    "Markdown-ish one-line docstrings -> RST, plus the per-parameter comments (fastcore docments) as :param: fields."
    lines[:] = [_rst_escape(l) for l in lines]
    if what not in ("function", "method", "class"):
        return
    try:
        from fastcore.docments import docments
        docs = docments(obj.__init__ if what == "class" else obj, full=False)
    except Exception:  # noqa: BLE001 - no comments to add (builtins, C functions, missing fastcore)
        return
    params = [(k, v) for k, v in docs.items() if v and k not in ("return", "self")]
    if params or docs.get("return"):
        lines.append("")
        lines += [f":param {k}: {_rst_escape(v)}" for k, v in params]
        if docs.get("return"): lines.append(f":returns: {_rst_escape(docs['return'])}")


def _static_path(app, config):
    config.html_static_path.append(str(Path(app.srcdir) / "_static"))


def setup(app):
    app.connect("config-inited", _static_path)
    app.connect("html-page-context", _offline_page)
    app.connect("html-page-context", _drop_widget_state, priority=900)   # after myst-nb has added the page's scripts
    app.connect("autodoc-process-docstring", _docstring)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
