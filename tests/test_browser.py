"""Live viewers in a real browser: Voila serves a notebook with a `VolumeViewer` on localhost, and JupyterLab runs a
notebook with a `ShapeModeExplorer`; headless chromium (Debian's, driven by Playwright) moves a slider and checks that
the plot changed. The pages must make no request outside localhost and log no console error. Skips only when no
chromium (./run.sh installs it where it can) or no JupyterLab (a dev requirement) is installed."""
import os
import secrets
import signal
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
    for c in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
              shutil.which("chromium-browser")):
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
FONTAWESOME_LINK = ('<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/@fortawesome/fontawesome-free@^5/css/{}"'
                    ' type="text/css" />')
OFFLINE_TEMPLATE = """\
{%%- extends 'lab/index.html.j2' -%%}
{%%- block notebook_css -%%}
{{ super() | replace('%s', '')
           | replace('%s', '') }}
{%%- endblock notebook_css -%%}
""" % (FONTAWESOME_LINK.format("all.min.css"), FONTAWESOME_LINK.format("v4-shims.min.css"))


def write_voila_app(folder: Path, cell: str = VIEWER_CELL, name: str = "viewer.ipynb") -> Path:
    "A one-cell notebook `folder/name` and the offline Voila template (folder/jupyter) it is served with."
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    path = folder / name
    nbformat.write(nb, path)
    tpl = folder / "jupyter" / "voila" / "templates" / "offline"
    tpl.mkdir(parents=True)
    (tpl / "index.html.j2").write_text(OFFLINE_TEMPLATE)
    (tpl / "conf.json").write_text('{"base_template": "lab"}')
    return path


def kill_kernels(runtime_dir: Path):
    "Kill the kernels still running from the connection files in `runtime_dir` (Linux: found through /proc)."
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(runtime_dir) in cmdline.read_bytes().decode(errors="replace"):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass


@contextmanager
def serve(args, port: int, cwd: Path, log_path: Path, env: dict, runtime_dir: Path | None = None):
    "Run `python -m <args>` as a server; wait until `port` accepts connections; stop it (and its kernels) at exit."
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        t0 = time.time()
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() - t0 > 90:
                    pytest.fail(f"{args[0]} did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        yield proc
    finally:
        proc.terminate()                       # the server shuts its kernels down on SIGTERM
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if runtime_dir is not None:
            kill_kernels(runtime_dir)
        log.close()


@contextmanager
def voila_app(folder: Path, cell: str = VIEWER_CELL, name: str = "viewer.ipynb"):
    "Serve the one-cell notebook `cell` with Voila on localhost (offline template); yields its URL."
    nb = write_voila_app(folder, cell, name)
    port = free_port()
    env = dict(os.environ, JUPYTER_PATH=str(folder / "jupyter"), PYTHONUNBUFFERED="1")
    with serve(["voila", str(nb), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1", "--template=offline",
                "--show_tracebacks=True"], port, folder, folder / "voila.log", env):
        yield f"http://127.0.0.1:{port}/"


@pytest.fixture
def voila_url(tmp_path):
    with voila_app(tmp_path) as url: yield url


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
        page.wait_for_function("document.querySelector('.js-plotly-plot').data[0].name === 'axial (z) 26'",
                               timeout=60_000)
        page.wait_for_timeout(500)
        assert plot.screenshot() != before                       # the drawn slice changed
        assert "26" in page.locator(".widget-slider", has_text="slice").inner_text()
        # the landmark picker jumps to landmark 0's slice (z = 20), where its marker and heatmap blob show
        page.locator(".widget-dropdown select").select_option(label="landmarks 0")
        page.wait_for_function("document.querySelector('.js-plotly-plot').data[0].name === 'axial (z) 20'",
                               timeout=60_000)
        page.wait_for_function("document.querySelector('.js-plotly-plot').data[2].x.length === 1", timeout=30_000)
        assert page.evaluate("document.querySelector('.js-plotly-plot').data[2].text[0]") == "landmarks 0"
        assert "20" in page.locator(".widget-slider", has_text="slice").inner_text()
        page.wait_for_timeout(500)
        shot = tmp_path / "volume_viewer_voila.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"\nscreenshot of the volume viewer in Voila: {shot}")
        assert seen["external"] == [], f"requests outside localhost: {seen['external']}"
        assert seen["errors"] == [], f"console errors: {seen['errors']}"


EXPLORER_CELLS = ["""\
import numpy as np
from shape_nb.shape import ShapePCA
from shape_nb.widgets import ShapeModeExplorer
rng = np.random.default_rng(1)
t = np.linspace(0, 2 * np.pi, 20, endpoint=False)
shapes = np.stack([np.stack([(1 + 0.2 * rng.normal()) * np.cos(t), (1 + 0.1 * rng.normal()) * np.sin(t)], 1)
                   for _ in range(15)])""", """\
explorer = ShapeModeExplorer(ShapePCA(n_components=2).fit(shapes), n_modes=2, height=420)
explorer"""]

# The first three keep JupyterLab from reaching outside localhost (as in ./run.sh lab): no news feed, no check for a
# new release on PyPI, the read-only extension manager (the default one searches PyPI). `window.jupyterapp` gives the
# test the application's command registry and the notebook's kernel session.
LAB_OPTIONS = ["--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly", "--LabApp.expose_app_in_browser=True",
               "--MappingKernelManager.default_kernel_name=python3"]


@pytest.fixture
def lab_url(tmp_path):
    pytest.importorskip("jupyterlab", reason="no JupyterLab installed (a dev requirement: pip install -e '.[dev]')")
    if find_chromium() is None:
        pytest.skip("no chromium found (install it: apt-get install chromium, or set CHROMIUM=/path/to/chromium)")
    import nbformat
    root, home = tmp_path / "nbs", tmp_path / "home"
    root.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in EXPLORER_CELLS])
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    nbformat.write(nb, root / "explorer.ipynb")
    notify = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notify.parent.mkdir(parents=True)
    notify.write_text('{"fetchNews": "false", "checkForUpdates": false}')   # no "get notified about news?" toast
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, PYTHONUNBUFFERED="1", JUPYTER_CONFIG_DIR=str(home / "config"),
               JUPYTER_DATA_DIR=str(home / "data"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               IPYTHONDIR=str(home / "ipython"), JUPYTER_PATH=str(Path(sys.prefix) / "share" / "jupyter"))
    args = ["jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", *LAB_OPTIONS,
            f"--LabApp.user_settings_dir={home / 'settings'}", f"--LabApp.workspaces_dir={home / 'workspaces'}"]
    if hasattr(os, "getuid") and os.getuid() == 0:
        args.append("--allow-root")
    with serve(args, port, root, tmp_path / "lab.log", env, runtime_dir=home / "runtime"):
        yield f"http://127.0.0.1:{port}/lab/tree/explorer.ipynb?reset&token={token}"


def test_shape_mode_explorer_slider_in_jupyterlab(lab_url, tmp_path):
    notebook = "window.jupyterapp && jupyterapp.shell.currentWidget && jupyterapp.shell.currentWidget.sessionContext"
    plot = "document.querySelector('.jp-OutputArea .js-plotly-plot')"
    with chromium_page({"width": 1200, "height": 900}) as (page, seen):
        page.goto(lab_url, timeout=120_000)
        page.wait_for_function(f"{notebook} && {notebook}.session && {notebook}.session.kernel "
                               f"&& {notebook}.session.kernel.status === 'idle'", timeout=90_000)
        assert page.evaluate(f"{notebook}.session.kernel.name") == "python3"
        page.evaluate("jupyterapp.commands.execute('notebook:run-all-cells')")
        page.wait_for_selector(".jp-OutputArea .js-plotly-plot .main-svg", timeout=90_000)   # the FigureWidget drew
        page.wait_for_function(f"{plot}.data.length === 2", timeout=30_000)
        line = ".jp-OutputArea .js-plotly-plot .scatterlayer .trace:nth-child(2) path.js-line"
        x0, d0 = page.evaluate(f"Array.from({plot}.data[1].x)"), page.get_attribute(line, "d")
        assert x0 == page.evaluate(f"Array.from({plot}.data[0].x)")           # at 0 SD: the shape is the mean shape
        slider = page.locator(".jp-OutputArea .widget-slider", has_text="mode 1")
        slider.locator(".noUi-handle").first.focus()
        for _ in range(10):
            page.keyboard.press("ArrowRight")
        page.wait_for_function(f"{plot}.data[1].x[0] !== {x0[0]}", timeout=30_000)      # the kernel sent a new shape
        page.wait_for_timeout(500)
        assert page.get_attribute(line, "d") != d0                                       # and the drawn outline moved
        assert slider.locator(".widget-readout").inner_text() != "0.00"
        assert "distance from the mean: 0.00" not in page.locator(".jp-OutputArea .widget-html").first.inner_text()
        shot = tmp_path / "shape_mode_explorer_jupyterlab.png"
        page.screenshot(path=str(shot))
        print(f"\nscreenshot of the shape mode explorer in JupyterLab: {shot}")
        assert seen["external"] == [], f"requests outside localhost: {seen['external']}"
        assert seen["errors"] == [], f"console errors: {seen['errors']}"
