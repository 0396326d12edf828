"""The documentation site: built offline (Sphinx + myst-nb, nbs/_sphinx/build.py) and opened in headless chromium.
Pages must load without console errors and without any request outside the site, plotly figures must be drawn,
and the API reference must list each module's public names. To stay fast, the build here executes only the
home page and the figure and viewer notebooks (50_viz, 51_widgets); `./run.sh docs` executes every notebook."""
import importlib
import importlib.util
from pathlib import Path

import pytest

from test_browser import chromium_page

ROOT = Path(__file__).resolve().parents[1]


def docs_builder():
    "nbs/_sphinx/build.py as a module (the same code as ./run.sh docs)."
    spec = importlib.util.spec_from_file_location("shape_nb_docs_build", ROOT / "nbs" / "_sphinx" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    out = tmp_path_factory.mktemp("docs")
    html = docs_builder().build(out, execute="auto", jobs=2, quiet=True, only="50_viz,51_widgets,index")
    assert (html / "index.html").is_file()
    return html


def page_checks(page, seen, url):
    page.goto(url, wait_until="load", timeout=120_000)
    page.wait_for_timeout(300)
    assert seen["external"] == [], f"{url}: requests outside the site: {seen['external']}"
    assert seen["errors"] == [], f"{url}: console errors: {seen['errors']}"


def browse(html: Path, name: str, fn):
    with chromium_page({"width": 1280, "height": 900}) as (page, seen):
        return fn(page, seen, (html / name).as_uri())


def test_site_pages_exist(site):
    for name in ["index.html", "50_viz.html", "51_widgets.html", "10_discovery.html", "api/index.html", "api/tps.html"]:
        assert (site / name).is_file(), name
    assert (site / "_static" / "vendor" / "plotly.min.js").is_file()
    index = (site / "index.html").read_text()
    for ref in ["50_viz.html", "10_discovery.html", "api/index.html"]:
        assert f'href="{ref}' in index, f"home page does not link {ref}"
    if (ROOT / "nbs" / "tutorials").is_dir() and any((ROOT / "nbs" / "tutorials").glob("*.ipynb")):
        assert 'href="tutorials/' in index


def test_no_cdn_references_in_pages(site):
    for f in site.rglob("*.html"):
        text = f.read_text()
        for host in ("cdn.plot.ly", "cdnjs.cloudflare.com", "cdn.jsdelivr.net", "unpkg.com"):
            assert f'src="https://{host}' not in text and f"src='https://{host}" not in text, f"{f.name} loads from {host}"


def test_home_page_loads_offline(site):
    def check(page, seen, url):
        page_checks(page, seen, url)
        assert "shape_nb" in page.title()
        assert page.locator("div.sphinxsidebar a", has_text="API reference").count() >= 1
    browse(site, "index.html", check)


def test_math_renders_offline(site):
    "MathJax comes from the site itself (MathJax 3, SVG output) and typesets the TPS equations."
    def check(page, seen, url):
        page_checks(page, seen, url)
        page.wait_for_selector("mjx-container svg", state="attached", timeout=60_000)
        assert page.locator("mjx-container").count() >= 10
        assert seen["external"] == [] and seen["errors"] == [], seen
    browse(site, "01_tps.html", check)


def test_viz_page_draws_plotly_figures(site, tmp_path):
    def check(page, seen, url):
        page_checks(page, seen, url)
        page.wait_for_function("document.querySelectorAll('.plotly-graph-div .main-svg').length >= 8", timeout=60_000)
        n_div = page.locator(".plotly-graph-div").count()
        n_drawn = page.evaluate("Array.from(document.querySelectorAll('.plotly-graph-div')).filter(d => d._fullData && d.querySelector('.main-svg')).length")
        assert n_div >= 10 and n_drawn == n_div, (n_div, n_drawn)
        # the 3D landmark figure: a WebGL scene with the isosurface and the landmark scatter
        kinds = page.evaluate("Array.from(document.querySelectorAll('.plotly-graph-div')).map(d => d.data.map(t => t.type).join(','))")
        i3d = next(i for i, k in enumerate(kinds) if "scatter3d" in k and ("isosurface" in k or "mesh3d" in k))
        fig = page.locator(".plotly-graph-div").nth(i3d)
        fig.scroll_into_view_if_needed()
        assert fig.locator("canvas").count() >= 1                  # the gl scene is drawn on a canvas
        page.wait_for_timeout(1500)
        shot = tmp_path / "docs_viz_3d_landmarks.png"
        fig.screenshot(path=str(shot))
        print(f"\nscreenshot of the docs page's 3D landmark figure: {shot}")
        full = tmp_path / "docs_viz_page.png"
        page.screenshot(path=str(full))
        print(f"screenshot of the docs page (top): {full}")
        assert seen["external"] == [] and seen["errors"] == [], seen
    browse(site, "50_viz.html", check)


def test_widgets_page_shows_static_snapshots(site):
    "Without a kernel the viewers show a plotly snapshot of their figure (their text/html), not a dead widget."
    text = (site / "51_widgets.html").read_text()
    assert 'type="application/vnd.jupyter.widget-view+json"' not in text
    assert 'type="application/vnd.jupyter.widget-state+json"' not in text   # no dead widget state (megabytes)
    assert "html-manager" not in text and "require.js" not in text
    assert len(text) < 6e6, f"51_widgets.html is {len(text) / 1e6:.1f} MB"

    def check(page, seen, url):
        page_checks(page, seen, url)
        page.wait_for_function("document.querySelectorAll('.plotly-graph-div .main-svg').length >= 4", timeout=60_000)
        kinds = page.evaluate("Array.from(document.querySelectorAll('.plotly-graph-div')).map(d => d.data.map(t => t.type).join(','))")
        assert "heatmap,heatmap,scatter" in kinds                   # the volume viewer: slice, heatmap overlay, landmarks
        assert "heatmap,scatter,scatter,heatmap,scatter,heatmap,scatter,scatter" in kinds   # the pair viewer
    browse(site, "51_widgets.html", check)


MODULES = ["core", "tps", "io", "data", "phantoms", "shape", "nets", "train", "discovery", "metrics", "viz", "widgets", "cli"]


@pytest.mark.parametrize("mod", MODULES)
def test_api_reference_lists_public_names(site, mod):
    m = importlib.import_module(f"shape_nb.{mod}")
    names = [n for n in m.__all__ if callable(getattr(m, n))][:4]
    text = (site / "api" / f"{mod}.html").read_text()
    missing = [n for n in names if f'id="shape_nb.{mod}.{n}"' not in text]
    assert not missing, f"API page of shape_nb.{mod} lacks {missing}"


def test_api_page_loads_offline(site):
    def check(page, seen, url):
        page_checks(page, seen, url)
        assert page.locator("dt.sig").count() >= 5
        assert page.locator("dl.field-list").count() >= 1            # parameter comments rendered as fields
    browse(site, "api/tps.html", check)
