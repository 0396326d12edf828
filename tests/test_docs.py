"""The documentation site: built offline (Sphinx + myst-nb, nbs/_sphinx/build.py) and opened in headless chromium.
Pages must load without console errors and without any request outside the site; plotly figures must be drawn;
every module page carries an API entry for each public name of its module (and none for private helpers, and no
export-cell source); the offline search finds `tps_fit`. To stay fast, the build here executes only the home page
and the figure and viewer notebooks (50_viz, 51_widgets); `./run.sh docs` executes every notebook."""
import ast
import html as htmllib
import importlib
import importlib.util
import json
import re
from pathlib import Path

import pytest

from test_browser import find_chromium, launch, watch

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"


def docs_builder():
    "nbs/_sphinx/build.py as a module (the same code as ./run.sh docs)."
    spec = importlib.util.spec_from_file_location("shape_nb_docs_build", NBS / "_sphinx" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    pytest.importorskip("furo")
    out = tmp_path_factory.mktemp("docs")
    html = docs_builder().build(out, execute="cache", jobs=2, quiet=True, only="50_viz,51_widgets,index")
    assert (html / "index.html").is_file()
    return html


def module_notebooks() -> dict:
    "Notebook name -> (module name, [export cell sources]) for every notebook that exports a module."
    out = {}
    for nb in sorted(NBS.glob("[!_.]*.ipynb")):
        cells = [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
        src = ["".join(c["source"]) for c in cells]
        exp = next((re.search(r"^#\|\s*default_exp\s+(\S+)", s, re.M) for s in src if "default_exp" in s), None)
        if exp:
            out[nb.stem] = (exp.group(1), [s for s in src if re.search(r"^#\|\s*exports?\s*$", s, re.M)])
    return out


def module_all(module: str) -> list:
    name = "shape_nb" if module == "__init__" else f"shape_nb.{module}"
    return list(importlib.import_module(name).__all__)


FIGURES = "Array.from(document.querySelectorAll('.plotly-graph-div'))"
TRACE_TYPES = FIGURES + ".map(d => d.data.map(t => t.type).join(','))"
ENTRY = re.compile(r'<dl class="py (\w+) api-entry">\s*<dt class="sig sig-object py" id="([^"]+)">')


def api_entries(page: str) -> list:
    "(kind, anchor id) of every API entry on a page."
    return ENTRY.findall(page)


def code_blocks(page: str) -> str:
    "The text of every code block on a page (tags stripped)."
    return "\n".join(htmllib.unescape(re.sub(r"<[^>]+>", "", b)) for b in re.findall(r"<pre>(.*?)</pre>", page, re.S))


def defined_names(src: str) -> list:
    "Top-level def/class names of an export cell."
    try:
        return [n.name for n in ast.parse(src).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    except SyntaxError:
        return []


def page_checks(page, seen, url):
    page.goto(url, wait_until="load", timeout=120_000)
    page.wait_for_timeout(300)
    assert seen["external"] == [], f"{url}: requests outside the site: {seen['external']}"
    assert seen["errors"] == [], f"{url}: console errors: {seen['errors']}"


@pytest.fixture(scope="module")
def browser():
    "One headless system chromium for the module's page checks (skips when none is installed)."
    if find_chromium() is None:
        pytest.skip("no chromium found (install it: apt-get install chromium, or set CHROMIUM=/path/to/chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = launch(p)
        try:
            yield b
        finally:
            b.close()


def browse(browser, html: Path, name: str, fn, query: str = ""):
    "Open a page of the site in a fresh tab with outside requests blocked and errors recorded; run fn(page, seen, url)."
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        return fn(page, watch(page), (html / name).as_uri() + query)
    finally:
        page.close()


def test_site_pages_exist(site):
    for name in ["index.html", "use_your_images.html", "results.html", "api/index.html", "search.html",
                 "50_viz.html", "51_widgets.html", "10_discovery.html", "01_tps.html", "searchindex.js"]:
        assert (site / name).is_file(), name
    assert not (site / "api" / "tps.html").exists()                # the module pages carry the API now
    assert (site / "_static" / "vendor" / "plotly.min.js").is_file()
    index = (site / "index.html").read_text()
    for ref in ["use_your_images.html", "50_viz.html", "10_discovery.html", "api/index.html", "results.html"]:
        assert f'href="{ref}' in index, f"home page does not link {ref}"
    if (NBS / "tutorials").is_dir() and any((NBS / "tutorials").glob("*.ipynb")):
        assert 'href="tutorials/' in index


def test_nothing_loaded_from_outside(site):
    "No page, stylesheet or script refers to an outside script, stylesheet or font (links to papers are fine)."
    outside = re.compile(r"""<(script|link|img|iframe)\b[^>]*\b(src|href)=["'](https?:)?//""", re.I)
    for f in site.rglob("*.html"):
        m = outside.search(f.read_text())
        assert m is None, f"{f.relative_to(site)} loads {m.group(0)!r}"
    for f in site.rglob("*.css"):
        fetch = re.search(r"url\(\s*['\"]?(https?:)?//", f.read_text())
        assert not fetch, f"{f.relative_to(site)} fetches from outside"


def test_home_page_loads_offline(site, browser, tmp_path):
    def check(page, seen, url):
        page_checks(page, seen, url)
        assert "shape_nb" in page.title()
        assert page.locator(".sidebar-tree a", has_text="API index").count() >= 1
        assert page.locator(".sidebar-tree a", has_text="Use it on your own images").count() >= 1
        page.wait_for_selector("#landing-figure .main-svg", timeout=60_000)          # the figure made at build time
        kinds = page.evaluate("document.getElementById('landing-figure').data.map(t => t.type)")
        assert kinds.count("heatmap") == 3 and "scatter" in kinds, kinds
        assert page.locator("button.copybtn").count() >= 1                           # copy buttons on the code
        page.screenshot(path=str(tmp_path / "docs_home.png"))
        print(f"\nscreenshot of the docs landing page: {tmp_path / 'docs_home.png'}")
    browse(browser, site, "index.html", check)


@pytest.mark.parametrize("name", ["use_your_images.html", "results.html", "api/index.html", "10_discovery.html"])
def test_pages_load_offline(site, browser, name, tmp_path):
    def check(page, seen, url):
        page_checks(page, seen, url)
        shot = tmp_path / name.replace("/", "_").replace(".html", ".png")
        page.screenshot(path=str(shot))
        print(f"\nscreenshot of the docs page {name}: {shot}")
    browse(browser, site, name, check)


def test_own_images_page(site):
    text = (site / "use_your_images.html").read_text()
    for cmd in ["shape_nb discover IMAGES --k 30 --keep 12 --out OUT", "shape_nb deepssm predict OUT/deepssm.pt NEW",
                "shape_nb semisup train --labelled DIR --labels DIR --unlabelled DIR --out OUT", "train_from_folder",
                "ShapePCA", "shape_zscores"]:
        assert cmd in code_blocks(text), cmd


def test_results_page_tables_every_result_file(site):
    text = (site / "results.html").read_text()
    files = sorted((ROOT / "bench" / "results").glob("*.json"))
    if not files:
        assert "./run.sh bench" in code_blocks(text)
    for f in files:
        assert f.name in text, f"results page lacks {f.name}"
    assert "Notebook run times" in text and "50_viz" in text       # the notebooks this build executed


MODULE_PAGES = module_notebooks()


@pytest.mark.parametrize("nb", sorted(MODULE_PAGES))
def test_module_page_has_api_entries(site, nb):
    "An entry for every public name of the module, where it is defined; none for private names; no export code."
    module, export_cells = MODULE_PAGES[nb]
    public = module_all(module)
    page = (site / f"{nb}.html").read_text()
    entries = api_entries(page)
    names = [n for _, n in entries]
    if public:
        assert entries, f"{nb}.html has no API entry"
    for name in names:
        assert not any(part.startswith("_") for part in name.split(".")), f"{nb}.html: private entry {name}"
        assert name.split(".")[0] in public, f"{nb}.html: entry {name} is not in shape_nb.{module}.__all__"
    missing = [n for n in public if n not in names]
    assert not missing, f"{nb}.html lacks entries for {missing}"
    code = code_blocks(page)
    assert "#| export" not in code
    for src in export_cells:
        for name in defined_names(src):
            assert f"def {name}(" not in code and f"class {name}" not in code, f"{nb}.html shows the code of {name}"


def test_api_entry_anchor_and_parameters(site):
    "tps_fit's entry: anchored at its name, with the signature and the parameter table from the comments."
    page = (site / "01_tps.html").read_text()
    start = page.find('<dt class="sig sig-object py" id="tps_fit">')
    assert start > 0, "no entry #tps_fit"
    end = page.find('<dl class="py ', start)
    entry = htmllib.unescape(re.sub(r"<[^>]+>", "", page[start:end]))
    assert "Fit a batched thin-plate spline" in entry
    assert "(B, N, d) control points" in entry and "Tikhonov regularisation" in entry        # the parameter comments
    index = (site / "api" / "index.html").read_text()
    assert 'href="../01_tps.html#tps_fit"' in index or 'href="../01_tps.html#shape_nb.tps.tps_fit"' in index


def test_math_renders_offline(site, browser):
    "MathJax comes from the site itself (MathJax 3, SVG output) and typesets the TPS equations."
    def check(page, seen, url):
        page_checks(page, seen, url)
        page.wait_for_selector("mjx-container svg", state="attached", timeout=60_000)
        assert page.locator("mjx-container").count() >= 10
        assert seen["external"] == [] and seen["errors"] == [], seen
    browse(browser, site, "01_tps.html", check)


def test_search_finds_tps_fit(site, browser):
    "Sphinx's own search (searchindex.js, no server) returns the entry of tps_fit."
    def check(page, seen, url):
        page_checks(page, seen, url)
        page.wait_for_selector("#search-results ul.search li a", timeout=60_000)
        hrefs = page.eval_on_selector_all("#search-results ul.search li a",
                                          "els => els.map(e => e.getAttribute('href'))")
        assert any("01_tps.html" in h and "tps_fit" in h for h in hrefs), hrefs
        assert seen["external"] == [] and seen["errors"] == [], seen
    browse(browser, site, "search.html", check, query="?q=tps_fit")


def test_viz_page_draws_plotly_figures(site, browser, tmp_path):
    def check(page, seen, url):
        page_checks(page, seen, url)
        page.wait_for_function("document.querySelectorAll('.plotly-graph-div .main-svg').length >= 8", timeout=60_000)
        n_div = page.locator(".plotly-graph-div").count()
        n_drawn = page.evaluate(FIGURES + ".filter(d => d._fullData && d.querySelector('.main-svg')).length")
        assert n_div >= 10 and n_drawn == n_div, (n_div, n_drawn)
        # the 3D landmark figure: a WebGL scene with the isosurface and the landmark scatter
        kinds = page.evaluate(TRACE_TYPES)
        i3d = next(i for i, k in enumerate(kinds) if "scatter3d" in k and ("isosurface" in k or "mesh3d" in k))
        fig = page.locator(".plotly-graph-div").nth(i3d)
        fig.scroll_into_view_if_needed()
        assert fig.locator("canvas").count() >= 1                  # the gl scene is drawn on a canvas
        page.wait_for_timeout(1500)
        shot = tmp_path / "docs_viz_3d_landmarks.png"
        fig.screenshot(path=str(shot))
        print(f"\nscreenshot of the docs page's 3D landmark figure: {shot}")
        assert seen["external"] == [] and seen["errors"] == [], seen
    browse(browser, site, "50_viz.html", check)


def test_widgets_page_shows_static_snapshots(site, browser):
    "Without a kernel the viewers show a plotly snapshot of their figure (their text/html), not a dead widget."
    text = (site / "51_widgets.html").read_text()
    assert 'type="application/vnd.jupyter.widget-view+json"' not in text
    assert 'type="application/vnd.jupyter.widget-state+json"' not in text   # no dead widget state (megabytes)
    assert "html-manager" not in text and "require.js" not in text
    assert len(text) < 6e6, f"51_widgets.html is {len(text) / 1e6:.1f} MB"

    def check(page, seen, url):
        page_checks(page, seen, url)
        page.wait_for_function("document.querySelectorAll('.plotly-graph-div .main-svg').length >= 4", timeout=60_000)
        kinds = page.evaluate(TRACE_TYPES)
        assert "heatmap,heatmap,scatter" in kinds             # the volume viewer: slice, heatmap overlay, landmarks
        assert "heatmap,scatter,scatter,heatmap,scatter,heatmap,scatter,scatter" in kinds   # the pair viewer
    browse(browser, site, "51_widgets.html", check)
