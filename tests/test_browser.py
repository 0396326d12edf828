"""A live viewer in a real browser: Voila serves a notebook with a `VolumeViewer` on localhost, headless chromium
(Debian's, driven by Playwright) moves its slice slider and checks that the plot changed; the page must make no
request outside localhost. Skips only when no chromium is installed (./run.sh installs it where it can)."""
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
LOCAL = ("http://127.0.0.1", "http://localhost", "ws://127.0.0.1", "ws://localhost", "data:", "blob:", "about:")


def find_chromium():
    "Path of the system chromium (CHROMIUM env var, /usr/bin/chromium, or chromium / chromium-browser on PATH)."
    for c in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return None


def launch(playwright):
    exe = find_chromium()
    if exe is None:
        pytest.skip("no chromium found (install it: apt-get install chromium, or set CHROMIUM=/path/to/chromium)")
    return playwright.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)


@contextmanager
def chromium_page(viewport):
    "A page of a headless system chromium, with outside requests blocked and errors recorded: yields (page, seen)."
    if find_chromium() is None:
        pytest.skip("no chromium found (install it: apt-get install chromium, or set CHROMIUM=/path/to/chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport=viewport)
            yield page, watch(page)
        finally:
            browser.close()


def watch(page):
    "Abort and record every request outside localhost; record console errors and page errors."
    seen = {"external": [], "errors": []}

    def route(r):
        url = r.request.url
        if url.startswith(LOCAL) or url.startswith("file://"):
            r.continue_()
        else:
            seen["external"].append(url)
            r.abort()
    page.route("**/*", route)
    page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    return seen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


VIEWER_CELL = """\
import numpy as np, torch
from shape_nb.widgets import VolumeViewer
from shape_nb.phantoms import phantom_3d
from shape_nb.core import index_to_norm, pixel_grid
vol = phantom_3d(40)[0, 0].numpy()
lm = index_to_norm(np.array([[20.0, 10.0, 20.0], [12.0, 25.0, 22.0], [28.0, 30.0, 8.0]]), vol.shape)
g = pixel_grid((20, 20, 20), dtype=torch.float64).numpy()
heat = np.exp(-((g[None] - lm[:, None, None, None]) ** 2).sum(-1) / (2 * 0.12**2)).astype(np.float32)
viewer = VolumeViewer(vol, {"landmarks": lm}, heatmap=heat, height=380)
viewer.opacity.value = 0.7
viewer"""

# Voila's stock "lab" template links FontAwesome (icons only) from a CDN; this template is the same page
# without those two links, so that nothing at all is fetched from outside (our viewers use no icons).
OFFLINE_TEMPLATE = """\
{%- extends 'lab/index.html.j2' -%}
{%- block notebook_css -%}
{{ super() | replace('<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/@fortawesome/fontawesome-free@^5/css/all.min.css" type="text/css" />', '')
           | replace('<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/@fortawesome/fontawesome-free@^5/css/v4-shims.min.css" type="text/css" />', '') }}
{%- endblock notebook_css -%}
"""


def write_voila_app(folder: Path) -> Path:
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(VIEWER_CELL)])
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    path = folder / "viewer.ipynb"
    nbformat.write(nb, path)
    tpl = folder / "jupyter" / "voila" / "templates" / "offline"
    tpl.mkdir(parents=True)
    (tpl / "index.html.j2").write_text(OFFLINE_TEMPLATE)
    (tpl / "conf.json").write_text('{"base_template": "lab"}')
    return path


@pytest.fixture
def voila_url(tmp_path):
    nb = write_voila_app(tmp_path)
    port = free_port()
    env = dict(os.environ, JUPYTER_PATH=str(tmp_path / "jupyter"), PYTHONUNBUFFERED="1")
    log = open(tmp_path / "voila.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "voila", str(nb), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
                             "--template=offline", "--show_tracebacks=True"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        t0 = time.time()
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() - t0 > 90:
                    pytest.fail(f"voila did not start:\n{(tmp_path / 'voila.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_volume_viewer_slider_in_voila(voila_url, tmp_path):
    with chromium_page({"width": 1100, "height": 860}) as (page, seen):
        page.goto(voila_url, timeout=180_000)
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=180_000)   # the FigureWidget has drawn
        page.wait_for_selector(".js-plotly-plot .heatmaplayer image", state="attached", timeout=60_000)
        name = lambda: page.evaluate("document.querySelector('.js-plotly-plot').data[0].name")
        opacity = page.evaluate("document.querySelector('.js-plotly-plot').data[1].opacity")
        first = name()
        assert first == "axial (z) 20", first
        assert opacity == 0.7                                    # the heatmap overlay is drawn semi-transparent
        plot = page.locator(".js-plotly-plot").first
        before = plot.screenshot()
        handle = page.locator(".widget-slider", has_text="slice").locator(".noUi-handle").first
        handle.focus()
        for _ in range(6):
            page.keyboard.press("ArrowRight")
        page.wait_for_function("document.querySelector('.js-plotly-plot').data[0].name === 'axial (z) 26'", timeout=60_000)
        page.wait_for_timeout(500)
        assert plot.screenshot() != before                       # the drawn slice changed
        assert "26" in page.locator(".widget-slider", has_text="slice").inner_text()
        # the landmark picker jumps to landmark 0's slice (z = 20), where its marker and heatmap blob show
        page.locator(".widget-dropdown select").select_option(label="landmarks 0")
        page.wait_for_function("document.querySelector('.js-plotly-plot').data[0].name === 'axial (z) 20'", timeout=60_000)
        page.wait_for_function("document.querySelector('.js-plotly-plot').data[2].x.length === 1", timeout=30_000)
        assert page.evaluate("document.querySelector('.js-plotly-plot').data[2].text[0]") == "landmarks 0"
        assert "20" in page.locator(".widget-slider", has_text="slice").inner_text()
        page.wait_for_timeout(500)
        shot = tmp_path / "volume_viewer_voila.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"\nscreenshot of the volume viewer in Voila: {shot}")
        assert seen["external"] == [], f"requests outside localhost: {seen['external']}"
        assert seen["errors"] == [], f"console errors: {seen['errors']}"
