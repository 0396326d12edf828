"""Build the documentation site offline: Sphinx + myst-nb over the notebooks in nbs/.

    python nbs/_sphinx/build.py [--out _docs] [--execute auto|off|force] [--jobs N]     (or ./run.sh docs)

Steps: (1) stage a Sphinx source folder `<out>/_src` from the notebooks (nbs/*.ipynb, nbs/tutorials/*.ipynb):
nbdev directives become myst-nb cell tags (`#| hide` -> remove-cell, `#| slow`/`#| cuda`/`#| eval: false` ->
skip-execution, the export cell is dropped), the home page (index.ipynb) gets the table of contents of
nbs/_sphinx/toc.md, and one API page per module of shape_nb (autodoc of its `__all__`); (2) copy the
JavaScript the pages need from installed packages (plotly.js from plotly, MathJax 3 from
sphinx-mathjax-offline): nothing is loaded from a CDN; (3) sphinx-build to `<out>/html`.

Execution (myst-nb, mode `auto`): the module and paper notebooks (committed without outputs) are run during
the build, which is how their plotly figures get into the pages; `-j 2` runs two at a time. Tutorials are never
executed here: they show their committed (small) outputs, so the build does not depend on the real data or on
their run time (SHAPE_NB_QUICK=1 is set all the same, for any notebook that reads it). `--only 50_viz,index`
executes just those notebooks (the others show their code without outputs): the docs test uses it to stay fast.
Sphinx keeps its environment in `<out>/doctrees` and notebooks whose staged copy did not change are not
executed again, so a second `./run.sh docs` only re-runs the notebooks that changed.
PLOTLY_RENDERER=plotly_mimetype+notebook makes figures static, interactive plotly.js figures.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent          # nbs/_sphinx
NBS = HERE.parent                               # nbs
ROOT = NBS.parent                               # repository root
SKIP_FLAGS = {"slow", "cuda"}                   # nbdev test flags (settings.ini tst_flags): not run in the docs


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


def convert_notebook(src: Path, dst: Path, toc: str | None = None):
    "Copy one notebook, turning nbdev directives into myst-nb tags; append the table of contents to the home page."
    import nbformat
    nb = nbformat.read(src, as_version=4)
    cells = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            cells.append(cell)
            continue
        d, body = directives(cell.source)
        if "default_exp" in d or "nbdev_export" in body:
            continue                                   # module name / export call: nothing to show or run
        tags = set(cell.metadata.get("tags", []))
        if "hide" in d or "exporti" in d: tags.add("remove-cell")
        if d.get("eval", "").lower() == "false" or SKIP_FLAGS & set(d): tags.add("skip-execution")
        if "hide_input" in d or d.get("echo", "").lower() == "false": tags.add("remove-input")
        if "hide_output" in d or d.get("output", "").lower() == "false": tags.add("remove-output")
        cell.source = body
        if not body.strip():
            continue
        if tags: cell.metadata["tags"] = sorted(tags)
        cells.append(cell)
    if toc:
        cells.append(nbformat.v4.new_markdown_cell(toc))
    nb.cells = cells
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dst)


def filter_toc(toc: str, srcdir: Path) -> str:
    "Drop toctree entries whose document does not exist (yet), e.g. a paper notebook still to be written."
    out, in_tree = [], False
    for line in toc.splitlines():
        s = line.strip()
        if s.startswith("```{toctree}"): in_tree = True
        elif s == "```": in_tree = False
        elif in_tree and s and not s.startswith(":") and "*" not in s:
            if not any((srcdir / f"{s}{ext}").exists() for ext in (".ipynb", ".md", ".rst")):
                continue
        out.append(line)
    return "\n".join(out)


def public_modules() -> list[str]:
    return sorted(p.stem for p in (ROOT / "shape_nb").glob("*.py") if not p.stem.startswith("_"))


def write_api(srcdir: Path):
    "One page per module of shape_nb: autodoc of its public names (`__all__`)."
    api = srcdir / "api"
    api.mkdir(parents=True, exist_ok=True)
    mods = public_modules()
    for m in mods:
        (api / f"{m}.md").write_text(f"# shape_nb.{m}\n\n```{{eval-rst}}\n.. automodule:: shape_nb.{m}\n```\n")
    (api / "index.md").write_text("# API reference\n\nThe public functions and classes of each module (its `__all__`), "
                                  "from their docstrings.\n\n```{toctree}\n:maxdepth: 1\n\n"
                                  + "\n".join(mods) + "\n```\n")


def vendor(static: Path):
    "Copy plotly.js (from plotly) and MathJax 3 (tex-svg.js, from sphinx-mathjax-offline) into the site: no CDN."
    import plotly
    from importlib.metadata import distribution
    v = static / "vendor"
    (v / "mathjax").mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", v / "plotly.min.js")
    mj = Path(distribution("sphinx-mathjax-offline").locate_file("sphinx-mathjax-offline/static/mathjax/tex-svg.js"))
    shutil.copy2(mj, v / "mathjax" / "tex-svg.js")


def stage(out: Path) -> Path:
    "Assemble the Sphinx source folder `<out>/_src` (kept between builds, so unchanged files keep their timestamps)."
    srcdir = out / "_src"
    srcdir.mkdir(parents=True, exist_ok=True)
    wanted = {}
    for nb in sorted(NBS.glob("*.ipynb")) + sorted((NBS / "tutorials").glob("*.ipynb")):
        wanted[nb.relative_to(NBS)] = nb
    # remove staged notebooks whose source is gone
    for old in list(srcdir.rglob("*.ipynb")):
        if old.relative_to(srcdir) not in wanted and "jupyter_execute" not in old.parts: old.unlink()
    toc_src = (HERE / "toc.md").read_text()
    write_api(srcdir)
    for rel, nb in wanted.items():
        if rel.name == "index.ipynb": continue
        dst = srcdir / rel
        tmp = dst.with_suffix(".tmp")
        convert_notebook(nb, tmp)
        if dst.exists() and dst.read_bytes() == tmp.read_bytes(): tmp.unlink()   # unchanged: Sphinx keeps its cache
        else: tmp.replace(dst)
    dst = srcdir / "index.ipynb"
    tmp = dst.with_suffix(".tmp")
    convert_notebook(NBS / "index.ipynb", tmp, toc=filter_toc(toc_src, srcdir))
    if dst.exists() and dst.read_bytes() == tmp.read_bytes(): tmp.unlink()
    else: tmp.replace(dst)
    static = srcdir / "_static"
    static.mkdir(exist_ok=True)
    for f in (HERE / "_static").iterdir(): shutil.copy2(f, static / f.name)
    vendor(static)
    return srcdir


def build(out: Path = ROOT / "_docs", execute: str = "auto", jobs: int | str = 1, quiet: bool = True,
          only: str | None = None) -> Path:
    "Stage and build the site; returns the folder of the HTML pages (`<out>/html`)."
    from sphinx.cmd.build import build_main
    out = Path(out).resolve()
    t0 = time.time()
    srcdir = stage(out)
    env = {"PLOTLY_RENDERER": "plotly_mimetype+notebook", "SHAPE_NB_QUICK": "1", "MPLBACKEND": "Agg",
           "PYTHONHASHSEED": "0", "SHAPE_NB_DOCS_EXECUTE": execute, "SHAPE_NB_DOCS_ONLY": only or ""}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        args = ["-b", "html", "-c", str(HERE), "-d", str(out / "doctrees"), "-j", str(jobs)]
        if quiet: args.append("-q")
        rc = build_main(args + [str(srcdir), str(out / "html")])
    finally:
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    if rc: raise SystemExit(f"sphinx-build failed with exit code {rc}")
    print(f"docs built in {time.time() - t0:.0f} s: {out / 'html' / 'index.html'}")
    return out / "html"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "_docs"), help="output folder (default: _docs, git-ignored)")
    ap.add_argument("--execute", default="auto", choices=["auto", "off", "force", "cache"],
                    help="myst-nb execution mode (auto: run notebooks that have no outputs)")
    ap.add_argument("--jobs", default="1", help="sphinx-build -j (notebooks are executed in parallel with -j 2)")
    ap.add_argument("--only", default=None, help="execute only these notebooks (comma-separated names, e.g. 50_viz,index)")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    build(Path(a.out), a.execute, a.jobs, quiet=not a.verbose, only=a.only)
