"""Build the documentation site offline: Sphinx + myst-nb over the notebooks in nbs/.

    python nbs/_sphinx/build.py [--out _docs] [--execute cache|force|off] [--jobs N] [--only 50_viz,index]
    (or ./run.sh docs)

Steps:
1. Stage a Sphinx source folder `<out>/_src`. Notebooks (nbs/*.ipynb, nbs/tutorials/*.ipynb): nbdev directives
   become myst-nb cell tags (`#| hide` -> remove-cell, `#| slow`/`#| cuda`/`#| eval: false` -> skip-execution),
   and every `#| export` cell runs hidden, followed by the API entries of the public names it defines (see
   `api_entries`: signature, docstring, the parameter table from the per-parameter comments, anchored at the
   qualified name: `01_tps.html#tps_fit`); its source is not shown and private names (`_x`) never appear. The
   markdown pages of nbs/_sphinx (*.md besides toc.md) are copied; the home page (index.ipynb) gets a figure made
   with shape_nb at build time and the table of contents of toc.md; `api/index.md` lists every entry by module
   and `results.md` tabulates bench/results/*.json.
2. Copy the JavaScript the pages need from installed packages (plotly.js from plotly, MathJax 3 from
   sphinx-mathjax-offline): nothing is loaded from a CDN.
3. Execute the notebooks, `--jobs` at a time, longest first, with SHAPE_NB_QUICK=1 and the cores shared out
   (OMP_NUM_THREADS = cores // jobs unless set: two kernels with a thread per core each on two cores run several
   times slower than with one thread each, for these small tensors); outputs go to a jupyter-cache
   in `<out>/.jupyter_cache` keyed by the code cells, so a notebook runs again only when its code changed (a
   failing notebook runs again at the next build). Tutorials are never executed here: they show their committed
   outputs. `--only 50_viz,index` executes just those notebooks (the others show their code without outputs).
   Run times per notebook and the slowest cells are printed and kept in `<out>/exec_times.json`.
4. sphinx-build to `<out>/html` with the furo theme (conf.py; myst-nb in `cache` mode takes the outputs from the
   cache). Sphinx keeps its environment in `<out>/doctrees`, so a second build re-reads only the pages that
   changed.
PLOTLY_RENDERER=plotly_mimetype+notebook makes figures static, interactive plotly.js figures.
"""
from __future__ import annotations

import argparse
import ast
import io
import json
import os
import re
import shutil
import time
import tokenize
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent          # nbs/_sphinx
NBS = HERE.parent                               # nbs
ROOT = NBS.parent                               # repository root
SKIP_FLAGS = {"slow", "cuda"}                   # nbdev test flags (settings.ini tst_flags): not run in the docs
EXPORT = {"export", "exports"}                  # cells whose public names become API entries


def directives(src: str) -> tuple[dict, str]:
    "nbdev `#| key[: value]` lines at the top of a cell -> ({key: value}, source without them)."
    found, body, head = {}, [], True
    for line in src.splitlines():
        m = re.match(r"^#\|\s*([\w-]+)\s*:?\s*(.*)$", line) if head else None
        if m:
            found[m.group(1)] = m.group(2).strip()
            continue
        if line.strip(): head = False
        body.append(line)
    return found, "\n".join(body).strip("\n")


# ---------------------------------------------------------------------------------------------------------------
# API entries from export cells
# ---------------------------------------------------------------------------------------------------------------
def module_all(module: str) -> list[str]:
    "The `__all__` of `shape_nb.<module>` read from its file (the last assignment wins, as at import); [] if none."
    path = ROOT / "shape_nb" / (module.replace(".", "/") + ".py")
    if not path.is_file(): return []
    names: list[str] = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            names = list(ast.literal_eval(node.value))
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) and node.target.id == "__all__":
            names += list(ast.literal_eval(node.value))
    return names


class Param:
    "One parameter: name (with * or ** for varargs), annotation, default (as written) and its comment."
    def __init__(self, name: str, anno: str = "", default: str = "", doc: str = ""):
        self.name, self.anno, self.default, self.doc = name, anno, default, doc


class Entry:
    "One API entry: a function, class, method or constant, with what its documentation needs."
    def __init__(self, name: str,          # qualified name: `tps_fit`, `LandmarkDiscovery.fit`
                 kind: str,                # function, class, exception, method, property, data
                 module: str,
                 params: list | None = None,
                 sig: str | None = None,   # the argument list as written; None: no signature (data, plain class)
                 returns: tuple = ("", ""),  # (annotation, comment)
                 doc: str = "", bases: list | None = None,
                 flags: list | None = None,  # classmethod, staticmethod, async
                 value: str = ""):         # constants: their value as written
        self.name, self.kind, self.module, self.params, self.sig = name, kind, module, params or [], sig
        self.returns, self.doc, self.bases, self.flags, self.value = returns, doc, bases or [], flags or [], value
        self.children: list[Entry] = []

    @property
    def modname(self) -> str:
        return "shape_nb" if self.module == "__init__" else f"shape_nb.{self.module}"

    @property
    def summary(self) -> str:
        return self.doc.strip().split("\n\n")[0].replace("\n", " ")


def line_comments(src: str) -> dict[int, str]:
    "Line number -> text of the `# comment` on that line (fastcore docments style)."
    out = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT and not tok.string.startswith("#|"):
                out[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return out


def _unparse(node, src: list | None = None) -> str:
    "A node's source as written when it is on one line (`src`: the cell's lines as UTF-8 bytes), else `ast.unparse`."
    if node is None: return ""
    if src and node.lineno == node.end_lineno:
        seg = src[node.lineno - 1][node.col_offset:node.end_col_offset].decode()
        if "#" not in seg: return seg
    return ast.unparse(node)


def signature(fn: ast.FunctionDef, src: list, comments: dict[int, str], drop_first: bool = False):
    "(argument list as source, [Param], (return annotation, return comment)) of a def; comments are docments."
    a = fn.args
    pos = a.posonlyargs + a.args
    defaults = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
    items = []                                            # (text, Param or None, last node for the comment line)
    for i, (arg, d) in enumerate(zip(pos, defaults)):
        items.append((arg, d))
        if a.posonlyargs and i == len(a.posonlyargs) - 1: items.append(("/", None))
    if a.vararg: items.append((a.vararg, "*"))
    elif a.kwonlyargs: items.append(("*", None))
    items += list(zip(a.kwonlyargs, a.kw_defaults))
    if a.kwarg: items.append((a.kwarg, "**"))
    if drop_first and items and isinstance(items[0][0], ast.arg): items = items[1:]
    body_start = fn.body[0].lineno if fn.body else fn.end_lineno + 1
    ret_line = fn.returns.end_lineno if fn.returns is not None else None
    last_on_line: dict[int, str] = {}
    texts, params = [], []
    for arg, extra in items:
        if isinstance(arg, str):
            texts.append(arg)
            continue
        star = extra if extra in ("*", "**") else ""
        d = None if star else extra
        text = star + arg.arg + (f": {_unparse(arg.annotation, src)}" if arg.annotation is not None else "")
        if d is not None: text += (" = " if arg.annotation is not None else "=") + _unparse(d, src)
        texts.append(text)
        end = max(n.end_lineno for n in (arg, arg.annotation, d) if n is not None)
        params.append(Param(star + arg.arg, _unparse(arg.annotation, src), _unparse(d, src)))
        last_on_line[end] = params[-1].name
    for line, name in last_on_line.items():
        if line < body_start and line != ret_line and line in comments:
            next(p for p in params if p.name == name).doc = comments[line]
    ret_doc = comments.get(ret_line, "") if ret_line and ret_line < body_start else ""
    return ", ".join(texts), params, (_unparse(fn.returns, src), ret_doc)


def _decorators(node) -> list[str]:
    return [_unparse(d.func if isinstance(d, ast.Call) else d) for d in node.decorator_list]


def patch_target(fn: ast.FunctionDef) -> str | None:
    "Class name in the first parameter's annotation of a `@patch` function (`self: Cls` / `cls: Cls`)."
    if not any(d.split(".")[-1] == "patch" for d in _decorators(fn)): return None
    args = fn.args.posonlyargs + fn.args.args
    if not args or args[0].annotation is None: return None
    ann = args[0].annotation
    if isinstance(ann, ast.Constant) and isinstance(ann.value, str): return ann.value.split(".")[-1]
    return _unparse(ann).split(".")[-1]


def function_entry(fn, name: str, module: str, src: list, comments: dict, kind: str = "function",
                   method: bool = False) -> Entry:
    decos = [d.split(".")[-1] for d in _decorators(fn)]
    flags = [f for f in ("classmethod", "staticmethod") if f in decos]
    if isinstance(fn, ast.AsyncFunctionDef): flags.append("async")
    if "property" in decos or "cached_property" in decos: kind = "property"
    sig, params, returns = signature(fn, src, comments, drop_first=method and "staticmethod" not in flags)
    return Entry(name, kind, module, params, None if kind == "property" else sig, returns,
                 ast.get_docstring(fn) or "", flags=flags)


def _fields(cls: ast.ClassDef, src: list, comments: dict) -> list[Param]:
    "Annotated class attributes (dataclass / NamedTuple fields) with their comments."
    return [Param(s.target.id, _unparse(s.annotation, src), _unparse(s.value, src), comments.get(s.end_lineno, ""))
            for s in cls.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]


def class_entry(cls: ast.ClassDef, module: str, src: list, comments: dict) -> Entry:
    bases = [_unparse(b, src) for b in cls.bases]
    kind = "exception" if any(re.search(r"(Error|Exception|Warning)$", b) for b in bases) else "class"
    e = Entry(cls.name, kind, module, doc=ast.get_docstring(cls) or "",
              bases=[b for b in bases if b not in ("object", "NamedTuple") and not b.split(".")[-1].startswith("_")])
    init = next((s for s in cls.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"), None)
    fields = _fields(cls, src, comments)
    if init is not None:
        e.sig, e.params, _ = signature(init, src, comments, drop_first=True)
    elif fields and ("dataclass" in [d.split(".")[-1] for d in _decorators(cls)] or "NamedTuple" in bases):
        e.sig = ", ".join(p.name + (f": {p.anno}" if p.anno else "") + (f" = {p.default}" if p.default else "")
                          for p in fields)
        e.params = fields
    for s in cls.body:
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) and not s.name.startswith("_"):
            e.children.append(function_entry(s, f"{cls.name}.{s.name}", module, src, comments, "method", method=True))
    return e


def api_entries(src: str, public: set[str], module: str) -> list[Entry]:
    """The API entries of one export cell: top-level `def`/`class` whose name is public (in `__all__`), methods
    added with `@patch` (or `Cls.name = classmethod(f)`) to a public class, and public constants."""
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return []
    comments = line_comments(src)
    src = [line.encode() for line in src.splitlines(keepends=True)]   # for the parameters as written
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    out = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            cls = patch_target(node)
            if cls:
                if cls in public and not node.name.startswith("_"):
                    out.append(function_entry(node, f"{cls}.{node.name}", module, src, comments, "method", method=True))
            elif node.name in public:
                out.append(function_entry(node, node.name, module, src, comments))
        elif isinstance(node, ast.ClassDef) and node.name in public:
            out.append(class_entry(node, module, src, comments))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name) and t.id in public and node.value is not None:
                    value = _unparse(node.value, src)
                    out.append(Entry(t.id, "data", module, doc=comments.get(node.lineno, ""),
                                     value=value if len(value) <= 100 else value[:97] + "...",
                                     returns=(_unparse(getattr(node, "annotation", None), src), "")))
                elif (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in public
                      and not t.attr.startswith("_")):
                    v = node.value
                    wrap = _unparse(v.func) if isinstance(v, ast.Call) and len(v.args) == 1 else ""
                    fn = defs.get(_unparse(v.args[0]) if wrap else _unparse(v))
                    if fn is not None:
                        e = function_entry(fn, f"{t.value.id}.{t.attr}", module, src, comments, "method",
                                           method=wrap != "staticmethod")
                        if wrap in ("classmethod", "staticmethod"): e.flags.append(wrap)
                        out.append(e)
    return out


def _cell(text: str) -> str:
    "Markdown table cell: one line, pipes escaped."
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    if not text: return ""
    tick = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return _cell(f"{tick}{pad}{text}{pad}{tick}")


def param_table(e: Entry) -> str:
    "nbdev-style table of the parameters (type, default, comment); empty when no parameter is commented."
    if not any(p.doc for p in e.params) and not e.returns[1]: return ""
    rows = ["| Parameter | Type | Default | Details |", "|---|---|---|---|"]
    rows += [f"| {_code(p.name)} | {_code(p.anno)} | {_code(p.default)} | {_cell(p.doc)} |" for p in e.params]
    if e.returns[0] or e.returns[1]:
        rows.append(f"| **returns** | {_code(e.returns[0])} |  | {_cell(e.returns[1])} |")
    return "\n".join(rows)


DIRECTIVE = {"function": "py:function", "class": "py:class", "exception": "py:exception", "method": "py:method",
             "property": "py:property", "data": "py:data"}


def render_entry(e: Entry, depth: int = 0) -> str:
    "MyST for one entry: a Python-domain directive (anchor id = the qualified name) holding docstring and table."
    colons = ":" * (3 + (1 if e.children else 0))
    head = e.name.split(".")[-1] if depth else e.name
    if e.sig is not None: head += f"({e.sig})"
    if e.returns[0] and e.kind not in ("data", "property", "class", "exception"): head += f" -> {e.returns[0]}"
    lines = [f"{colons}{{{DIRECTIVE[e.kind]}}} {head}"]
    if not depth: lines.append(f":module: {e.modname}")
    lines += [f":{f}:" for f in e.flags]
    if e.kind == "data":
        if e.returns[0]: lines.append(f":type: {e.returns[0]}")
        if e.value: lines.append(f":value: {e.value}")
    if e.kind == "property" and e.returns[0]: lines.append(f":type: {e.returns[0]}")
    lines.append("")
    if e.bases: lines += ["Bases: " + ", ".join(_code(b) for b in e.bases), ""]
    if e.doc: lines += [e.doc.strip(), ""]
    table = param_table(e)
    if table: lines += [table, ""]
    for c in e.children: lines += [render_entry(c, depth + 1), ""]
    lines.append(colons)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# staging
# ---------------------------------------------------------------------------------------------------------------
def convert_notebook(src: Path, dst: Path, figure: str | None = None, toc: str | None = None,
                     entries: list | None = None):
    """Copy one notebook, turning nbdev directives into myst-nb tags and export cells into API entries
    (collected in `entries`). Home page: the `figure` markdown goes before the first `## ` heading, the
    table of contents `toc` at the end."""
    import nbformat
    nb = nbformat.from_dict(json.loads(Path(src).read_text()))     # no schema validation: staging stays fast
    for c in nb.cells:
        if isinstance(c.source, list): c.source = "".join(c.source)
    module = next((directives(c.source)[0].get("default_exp") for c in nb.cells if c.cell_type == "code"
                   and "default_exp" in directives(c.source)[0]), None)
    public = set(module_all(module)) if module else set()
    cells, api = [], []                                # api: (position in cells, entries of an export cell)
    for cell in nb.cells:
        if cell.cell_type != "code":
            cells.append(cell)
            continue
        d, body = directives(cell.source)
        if "default_exp" in d or "nbdev_export" in body:
            continue                                   # module name / export call: nothing to show or run
        tags = set(cell.metadata.get("tags", []))
        if "hide" in d or "exporti" in d or EXPORT & set(d): tags.add("remove-cell")   # runs, is not shown
        if d.get("eval", "").lower() == "false" or SKIP_FLAGS & set(d): tags.add("skip-execution")
        if "hide_input" in d or d.get("echo", "").lower() == "false": tags.add("remove-input")
        if "hide_output" in d or d.get("output", "").lower() == "false": tags.add("remove-output")
        cell.source = body
        if not body.strip():
            continue
        if tags: cell.metadata["tags"] = sorted(tags)
        cells.append(cell)
        if EXPORT & set(d) and module:                 # in place of the code: the API entries of its public names
            api.append((len(cells), api_entries(cell.source, public, module)))
            cells.append(None)
    later = set()                                      # a name defined again further down (e.g. a method @patch-ed
    for _, found in reversed(api):                     # over the one in the class cell) is shown there only
        found[:] = [e for e in found if e.name not in later]
        for e in reversed(found):
            e.children = [c for c in e.children if c.name not in later]
            later.update([e.name] + [c.name for c in e.children])
    for i, found in api:
        if entries is not None: entries += found
        cells[i] = md_cell("\n\n".join(render_entry(e) for e in found)) if found else None
    cells = [c for c in cells if c is not None]
    if figure:
        i, c = next(((i, c) for i, c in enumerate(cells) if c.cell_type == "markdown" and "\n## " in c.source),
                    (len(cells), None))
        if c is not None:                              # split the cell at its first section
            head, tail = c.source.split("\n## ", 1)
            cells[i:i + 1] = [md_cell(head), md_cell("## " + tail)]
            i += 1
        cells.insert(i, md_cell(figure))
    if toc: cells.append(md_cell(toc))
    nb.cells = cells
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    nb.metadata.pop("widgets", None)
    return write_if_changed(dst, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def md_cell(text: str) -> dict:
    "A markdown cell whose id comes from its text (the same staged file for the same notebook: Sphinx skips it)."
    import hashlib
    from nbformat import from_dict
    return from_dict({"cell_type": "markdown", "id": "md-" + hashlib.sha1(text.encode()).hexdigest()[:12],
                      "metadata": {}, "source": text})


def write_if_changed(dst: Path, data: str | bytes) -> bool:
    "Write `data` unless the file already holds it (unchanged files keep their timestamps: Sphinx skips them)."
    dst.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    if dst.exists() and dst.read_bytes() == raw: return False
    dst.write_bytes(raw)
    return True


def filter_toc(toc: str, srcdir: Path) -> str:
    "Drop toctree entries whose document does not exist (yet), e.g. a paper notebook still to be written."
    out, in_tree = [], False
    for line in toc.splitlines():
        s = line.strip()
        if s.startswith("```{toctree}"): in_tree = True
        elif s == "```": in_tree = False
        elif in_tree and s and not s.startswith(":") and "*" not in s:
            m = re.search(r"<([^<>]+)>$", s)                 # `Title <docname>` or `docname`
            doc = m.group(1) if m else s
            if not any((srcdir / f"{doc}{ext}").exists() for ext in (".ipynb", ".md", ".rst")):
                continue
        out.append(line)
    return "\n".join(out)


def api_index(entries: dict[str, list[Entry]]) -> str:
    "The API index page: every entry of every module page, linked, with the first line of its docstring."
    lines = ["# API index", "",
             "Every public function, class and method of shape_nb, by module. Each name links to its entry on the "
             "module's page, where its signature, parameters and examples are.", ""]
    for page, es in entries.items():
        if not es: continue
        lines += [f"## `{es[0].modname}`", "", f"On the page {{doc}}`/{page}`.", "", "| name | what |", "|---|---|"]
        for e in es:
            for x in [e] + e.children:
                lines.append(f"| {{py:obj}}`{x.name} <{e.modname}.{x.name}>` | {_cell(x.summary)} |")
        lines.append("")
    return "\n".join(lines)


def landing_figure() -> str:
    """The home page's picture, made with shape_nb at build time: two phantoms with their landmarks and the first
    registered onto the second by the thin-plate spline through the landmarks (an interactive plotly figure)."""
    import plotly.io as pio
    import torch
    from shape_nb.phantoms import image_corners, tps_phantoms
    from shape_nb.tps import tps_warp_image
    from shape_nb.viz import image_figure
    imgs, cps = tps_phantoms(2, 96, sigma=0.08, seed=3)
    fixed = image_corners().expand(2, 4, 2)
    lm = torch.cat([fixed, cps], 1)
    registered = tps_warp_image(imgs[:1], lm[:1], lm[1:])
    panels = torch.cat([imgs, registered])[:, 0]
    fig = image_figure(panels, {"landmarks": torch.stack([cps[0], cps[1], cps[1]])},
                       titles=["source", "target", "source registered onto the target"], height=300)
    fig.update_layout(margin=dict(l=10, r=10, t=40, b=10))
    html = pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id="landing-figure",
                       config={"displaylogo": False, "responsive": True})
    html = "\n".join(line for line in html.splitlines() if line.strip())      # one HTML block for the markdown
    return (f'<div class="landing-figure">\n{html}\n</div>\n\n'
            "*Two Shepp-Logan phantoms warped by random thin-plate splines (`tps_phantoms`), their six true "
            "landmarks, and the source registered onto the target by the thin-plate spline through the landmarks "
            "(`tps_warp_image`; drawn with `image_figure`). Landmark discovery learns such landmarks from the images "
            "alone.*")


def _fmt(v) -> str:
    if v is None: return "–"
    if isinstance(v, bool): return str(v)
    if isinstance(v, float): return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and all(not isinstance(x, (dict, list)) for x in v):
        s = ", ".join(_fmt(x) for x in v)
        return s if len(s) <= 80 else s[:77] + "..."
    if isinstance(v, (dict, list)): s = json.dumps(v, default=str); return s if len(s) <= 80 else s[:77] + "..."
    return str(v)


def _flat(d: dict, prefix: str = "") -> dict:
    "Nested dict -> {dotted key: leaf}."
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v: out.update(_flat(v, f"{prefix}{k}."))
        else: out[f"{prefix}{k}"] = v
    return out


def _records_table(rows: list[dict], first: str | None = None) -> list[str]:
    rows = [_flat(r) for r in rows]
    cols = ([first] if first else []) + [c for c in dict.fromkeys(k for r in rows for k in r) if c != first]
    out = ["| " + " | ".join(_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_cell(_fmt(r.get(c, ""))) for c in cols) + " |" for r in rows]
    return out + [""]


def _leaf(v) -> bool:
    "A value that fits in one table cell: not a mapping, not a list of mappings."
    return not isinstance(v, dict) and not (isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v))


def json_tables(data, title: str, level: int = 3) -> list[str]:
    """One result file as tables: its scalar fields as a settings table, each list of records (or mapping of
    name -> record) as a table of its own, nested mappings as sub-sections."""
    if not isinstance(data, dict): data = {"value": data}
    scalars = {k: v for k, v in data.items() if _leaf(v)}
    out = []
    if scalars:
        out += ["| setting | value |", "|---|---|"] + [f"| {_cell(k)} | {_cell(_fmt(v))} |" for k, v in scalars.items()]
        out.append("")
    for k, v in data.items():
        if k in scalars: continue
        h = "#" * min(level, 6) + f" {k}"
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            out += [h, ""] + _records_table(v)
        elif isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            if all(_leaf(y) for x in v.values() for y in x.values()) or level >= 5:
                out += [h, ""] + _records_table([{"name": n, **x} for n, x in v.items()], "name")
            else:
                out += [h, ""] + json_tables(v, k, level + 1)
        elif isinstance(v, dict):
            out += [h, ""] + json_tables(v, k, level + 1)
        elif isinstance(v, list):
            out += [h, ""] + [f"- {_cell(_fmt(x))}" for x in v] + [""]
    return out


def results_page(results: Path, times: dict) -> str:
    "The Results page: every bench/results/*.json as tables (no number typed by hand), and the notebook run times."
    lines = ["# Results", ""]
    files = sorted(results.glob("*.json")) if results.is_dir() else []
    if files:
        lines += ["The benchmark and experiment results found in `bench/results/` when this site was built, one "
                  "section per file, with the settings each was run with. The scripts in `bench/` write them "
                  "(`./run.sh bench` runs the quick CPU versions; each script's docstring gives its full-size "
                  "command).", ""]
        for f in files:
            lines += [f"## {f.stem}", "", f"`bench/results/{f.name}`", ""]
            try:
                lines += json_tables(json.loads(f.read_text()), f.stem)
            except (json.JSONDecodeError, OSError) as err:
                lines += [f"Could not read this file: {err}", ""]
    else:
        lines += ["No benchmark results were present when this site was built. Produce them with", "",
                  "```bash", "./run.sh bench                    # quick CPU runs of every benchmark",
                  "./run.sh bench --device cuda      # full size on a GPU", "```", "",
                  "The scripts in `bench/` write `bench/results/*.json`; the next `./run.sh docs` shows them here "
                  "as tables.", ""]
    if times:
        lines += ["## Notebook run times", "",
                  "How long each notebook took to execute for this site (with `SHAPE_NB_QUICK=1`), and its slowest "
                  "cells. Notebooks whose code did not change since the previous build come from the execution "
                  "cache and are not run again.", "",
                  "| notebook | seconds | status | slowest cells (cell: seconds) |", "|---|---|---|---|"]
        for name, t in sorted(times.items(), key=lambda kv: -kv[1]["seconds"]):
            cells = ", ".join(f"{c['cell']}: {c['seconds']:.1f}" for c in t.get("cells", [])[:3])
            lines.append(f"| {name} | {t['seconds']:.1f} | {'ok' if t.get('ok') else 'failed'} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def vendor(static: Path):
    "Copy plotly.js (from plotly) and MathJax 3 (tex-svg.js, from sphinx-mathjax-offline) into the site: no CDN."
    import plotly
    from importlib.metadata import distribution
    v = static / "vendor"
    (v / "mathjax").mkdir(parents=True, exist_ok=True)
    for src, dst in [(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", v / "plotly.min.js"),
                     (Path(distribution("sphinx-mathjax-offline").locate_file(
                         "sphinx-mathjax-offline/static/mathjax/tex-svg.js")), v / "mathjax" / "tex-svg.js")]:
        if not dst.exists() or dst.stat().st_size != src.stat().st_size: shutil.copy2(src, dst)


def stage(out: Path) -> tuple[Path, dict]:
    "Assemble the Sphinx source folder `<out>/_src` (kept between builds); returns it and the entries by page."
    srcdir = out / "_src"
    srcdir.mkdir(parents=True, exist_ok=True)
    wanted = {nb.relative_to(NBS): nb                 # as nbdev: notebooks named _x or .x are not part of the project
              for nb in sorted(NBS.glob("*.ipynb")) + sorted((NBS / "tutorials").glob("*.ipynb"))
              if not nb.name.startswith(("_", "."))}
    pages = {p.name: p for p in sorted(HERE.glob("*.md")) if p.name != "toc.md"}
    for old in list(srcdir.rglob("*.ipynb")):     # remove staged notebooks whose source is gone
        if old.relative_to(srcdir) not in wanted and "jupyter_execute" not in old.parts: old.unlink()
    for old in list(srcdir.glob("*.md")):
        if old.name not in pages and old.name != "results.md": old.unlink()
    for old in (srcdir / "api").glob("*.md"):     # autodoc pages of earlier versions of this script
        if old.name != "index.md": old.unlink()
    entries = {}
    for rel, nb in wanted.items():
        if rel.name == "index.ipynb": continue
        entries[rel.with_suffix("").as_posix()] = found = []
        convert_notebook(nb, srcdir / rel, entries=found)
    for name, p in pages.items(): write_if_changed(srcdir / name, p.read_text())
    for img in sorted((NBS / "images").glob("*")):   # pictures the notebooks show as images/NAME
        if img.is_file(): write_if_changed(srcdir / "images" / img.name, img.read_bytes())
    write_if_changed(srcdir / "api" / "index.md", api_index(entries))
    if not (srcdir / "results.md").exists(): write_if_changed(srcdir / "results.md", results_page(Path("-"), {}))
    toc = filter_toc((HERE / "toc.md").read_text(), srcdir)
    try:
        figure = landing_figure()
    except Exception as err:  # noqa: BLE001 - the home page goes on without its picture
        print(f"warning: the home page figure could not be made: {err!r}")
        figure = None
    convert_notebook(NBS / "index.ipynb", srcdir / "index.ipynb", figure=figure, toc=toc)
    static = srcdir / "_static"
    static.mkdir(exist_ok=True)
    for f in (HERE / "_static").iterdir(): shutil.copy2(f, static / f.name)
    vendor(static)
    return srcdir, entries


# ---------------------------------------------------------------------------------------------------------------
# execution (parallel, cached)
# ---------------------------------------------------------------------------------------------------------------
def _execute(path: str, timeout: int) -> tuple[str, str, float, str | None]:
    "Run one staged notebook in a kernel (cwd: its folder); returns (path, executed notebook json, seconds, error)."
    import nbformat
    from jupyter_cache.executors.utils import single_nb_execution
    nb = nbformat.read(path, as_version=4)
    res = single_nb_execution(nb, cwd=str(Path(path).parent), timeout=timeout, allow_errors=False, record_timing=True)
    return path, nbformat.writes(nb), res.time, (res.exc_string or str(res.err)) if res.err else None


def _cell_times(nb) -> list[dict]:
    "The slowest cells of an executed notebook, from nbclient's timing metadata."
    from datetime import datetime
    out = []
    for i, c in enumerate(nb.cells):
        ex = c.get("metadata", {}).get("execution", {})
        a, b = ex.get("iopub.execute_input"), ex.get("shell.execute_reply")
        if c.cell_type == "code" and a and b:
            s = (datetime.fromisoformat(b.replace("Z", "+00:00")) - datetime.fromisoformat(a.replace("Z", "+00:00")))
            out.append({"cell": i, "id": c.get("id"), "seconds": round(s.total_seconds(), 2),
                        "first_line": (c.source.splitlines() or [""])[0][:80]})
    return sorted(out, key=lambda c: -c["seconds"])[:8]


def _error_line(nb) -> str:
    "`cell i: Error: message` of the cell that stopped a notebook."
    for i, c in enumerate(nb.cells):
        for o in c.get("outputs", []):
            if o.get("output_type") == "error": return f"cell {i}: {o.get('ename')}: {str(o.get('evalue'))[:300]}"
    return "no error output (timeout?)"


def _guess_seconds(path: Path) -> float:
    "Run time guess for a notebook never run in this output folder: the size of its shown code (0.01 s a character)."
    cells = json.loads(path.read_text())["cells"]
    return 0.01 * sum(len("".join(c["source"])) for c in cells
                      if c["cell_type"] == "code" and "remove-cell" not in c["metadata"].get("tags", []))


def to_execute(srcdir: Path, only: str | None) -> list[Path]:
    "The staged notebooks to execute: not the tutorials; with `only`, just those names."
    names = [s for s in (only or "").split(",") if s]
    return [p for p in sorted(srcdir.glob("*.ipynb")) if not names or p.stem in names]


def run_notebooks(out: Path, notebooks: list[Path], jobs: int, mode: str, timeout: int = 600) -> dict:
    """Execute the notebooks that the cache does not hold yet, `jobs` at a time, longest (last time) first; store
    them in the jupyter-cache that myst-nb reads. Returns {name: {seconds, ok, cells, cached}}."""
    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn
    cache = get_cache(str(out / ".jupyter_cache"))
    times_f = out / "exec_times.json"
    times = json.loads(times_f.read_text()) if times_f.exists() else {}
    todo = []
    for p in notebooks:
        nb = nbformat.read(p, as_version=4)
        if mode == "force":
            try: cache.remove_cache(cache.match_cache_notebook(nb).pk)
            except KeyError: pass
        try:
            cache.match_cache_notebook(nb)
            if p.stem in times: times[p.stem]["cached"] = True
        except KeyError:
            todo.append(p)
    todo.sort(key=lambda p: -times.get(p.stem, {}).get("seconds", _guess_seconds(p)))    # longest first
    failed = []
    workers = max(1, min(jobs, len(todo)))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = str(max(1, cores // workers))     # kernels share the cores: no oversubscribed OpenMP thread pools
    old = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    for k, v in old.items(): os.environ[k] = v or threads
    if todo:
        print(f"executing {len(todo)} notebook(s), {workers} at a time ({os.environ['OMP_NUM_THREADS']} threads "
              f"each): {', '.join(p.stem for p in todo)}")
        with ThreadPoolExecutor(workers) as pool:      # each notebook runs in its own kernel
            futs = [pool.submit(_execute, str(p), timeout) for p in todo]
            for fut in as_completed(futs):
                path, text, secs, err = fut.result()
                nb, name = nbformat.reads(text, as_version=4), Path(path).stem
                cells = _cell_times(nb)
                for c in nb.cells: c.metadata.pop("execution", None)    # the cache hashes cell metadata too
                rec = cache.cache_notebook_bundle(CacheBundleIn(nb, path, data={"execution_seconds": secs}),
                                                  check_validity=False, overwrite=True)
                if err: failed.append(rec.pk)
                times[name] = {"seconds": round(secs, 2), "ok": err is None, "cached": False, "cells": cells}
                slow = ", ".join(f"cell {c['cell']} {c['seconds']:.1f} s" for c in times[name]["cells"][:3])
                print(f"  {name}: {secs:.1f} s{' FAILED' if err else ''} (slowest: {slow})")
                if err: print("    " + _error_line(nb))
    for k, v in old.items():
        if v is None: os.environ.pop(k, None)
        else: os.environ[k] = v
    times_f.write_text(json.dumps(times, indent=1))
    return {"times": {k: v for k, v in times.items() if k in {p.stem for p in notebooks}}, "failed": failed}


# ---------------------------------------------------------------------------------------------------------------
def build(out: Path = ROOT / "_docs", execute: str = "cache", jobs: int | str = 2, quiet: bool = True,
          only: str | None = None) -> Path:
    "Stage, execute and build the site; returns the folder of the HTML pages (`<out>/html`)."
    from sphinx.cmd.build import build_main
    execute_mode = "cache" if execute == "auto" else execute
    out = Path(out).resolve()
    jobs = int(jobs)
    t0 = time.time()
    env = {"PLOTLY_RENDERER": "plotly_mimetype+notebook", "SHAPE_NB_QUICK": "1", "MPLBACKEND": "Agg",
           "PYTHONHASHSEED": "0", "SHAPE_NB_DOCS_EXECUTE": "off" if execute_mode == "off" else "cache",
           "SHAPE_NB_DOCS_CACHE": str(out / ".jupyter_cache"), "SHAPE_NB_DOCS_EXECUTED": ""}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        srcdir, _ = stage(out)
        t_stage = time.time()
        run = to_execute(srcdir, only) if execute_mode != "off" else []
        os.environ["SHAPE_NB_DOCS_EXECUTED"] = ",".join(p.name for p in run)
        ex = run_notebooks(out, run, jobs, execute_mode) if run else {"times": {}, "failed": []}
        t_exec = time.time()
        write_if_changed(srcdir / "results.md", results_page(ROOT / "bench" / "results", ex["times"]))
        args = ["-b", "html", "-c", str(HERE), "-d", str(out / "doctrees"), "-j", str(jobs)]
        if quiet: args.append("-q")
        rc = build_main(args + [str(srcdir), str(out / "html")])
        if ex["failed"]:              # shown with their traceback this time, run again at the next build
            from jupyter_cache import get_cache
            cache = get_cache(str(out / ".jupyter_cache"))
            for pk in ex["failed"]: cache.remove_cache(pk)
    finally:
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    if rc: raise SystemExit(f"sphinx-build failed with exit code {rc}")
    t1 = time.time()
    print(f"docs built in {t1 - t0:.0f} s (staging {t_stage - t0:.0f} s, notebooks {t_exec - t_stage:.0f} s, "
          f"sphinx {t1 - t_exec:.0f} s): {out / 'html' / 'index.html'}")
    return out / "html"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "_docs"), help="output folder (default: _docs, git-ignored)")
    ap.add_argument("--execute", default="cache", choices=["cache", "auto", "force", "off"],
                    help="cache: run the notebooks whose code changed since the last build (auto: the same); "
                         "force: run them all again; off: show code without outputs")
    ap.add_argument("--jobs", default="2", help="notebooks executed at a time, and sphinx-build -j")
    ap.add_argument("--only", default=None,
                    help="execute only these notebooks (comma-separated names, e.g. 50_viz,index)")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    build(Path(a.out), a.execute, a.jobs, quiet=not a.verbose, only=a.only)
