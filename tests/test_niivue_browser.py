"""NiiVue in a real browser: Voila serves a notebook with a `VolumeAnnotator` (a 32-voxel volume with a marked block
and a heatmap overlay) on localhost; headless chromium draws it with WebGL 2 in software (SwiftShader). The test
checks that the canvas draws the volume, that the overlay changes the pixels (opacity 0.8 against 0), and that a
click on the marked block yields a location event and a landmark at the block's voxel (within 1 voxel), saved
to the CSV. No request may leave localhost. Skips when chromium, Voila or ipyniivue is missing."""
import csv
import io
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from test_browser import find_chromium, voila_app, watch

pytest.importorskip("ipyniivue", reason="needs ipyniivue (pip install 'shape_nb[niivue]')")
pytest.importorskip("voila", reason="needs Voila (a dev requirement: pip install -e '.[dev]')")

# WebGL without a GPU: ANGLE on SwiftShader (chromium refuses software WebGL unless told it is wanted).
WEBGL_ARGS = ["--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
              "--disable-background-networking", "--disable-component-update"]
MARK = (6.5, 22.5, 15.5)          # centre (x, y, z) of the marked block: voxels x 5..8, y 21..24, z 14..17

CELL = """\
import numpy as np
from shape_nb.niivue import VolumeAnnotator
vol = np.zeros((32, 32, 32), np.float32)
vol[4:28, 4:28, 4:28] = 0.3
vol[14:18, 21:25, 5:9] = 1.0                                   # the marked block, (z, y, x)
zz, yy, xx = np.mgrid[0:32, 0:32, 0:32]
heat = np.exp(-((xx - 22) ** 2 + (yy - 10) ** 2 + (zz - 16) ** 2) / (2 * 3.0**2)).astype(np.float32)
ann = VolumeAnnotator(vol, ["tip", "base"], {labels!r}, image_name="marked.nii.gz", view="axial",
                      window=(0.0, 1.0), height=320)
ann.viewer.add_heatmap(heat, colormap="red", opacity=0.8, threshold=0.3)
ann"""


@contextmanager
def webgl_page(viewport):
    "A page of a headless chromium with software WebGL, outside requests blocked, errors recorded: (page, seen)."
    exe = find_chromium()
    if exe is None:
        pytest.skip("no chromium found (install it: apt-get install chromium, or set CHROMIUM=/path/to/chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=WEBGL_ARGS)
        try:
            page = browser.new_page(viewport=viewport)
            yield page, watch(page)
        finally:
            browser.close()


@pytest.fixture
def annotator_url(tmp_path):
    labels = tmp_path / "labels"
    with voila_app(tmp_path, CELL.format(labels=str(labels)), "annotator.ipynb") as url:
        yield url, labels / "marked.csv"


def pixels(png: bytes) -> np.ndarray:
    "(H, W, 3) int RGB of a PNG screenshot."
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def wait_for(f, timeout=60.0, every=0.5):
    "The first value of f() that is not None within `timeout` seconds, else None."
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = f()
        if v is not None: return v
        time.sleep(every)
    return None


def drawn(a):
    "The screenshot when it shows the volume (the grey block and the white marked block on black), else None."
    return a if (a.min(-1) > 200).sum() > 20 and (a.max(-1) > 40).sum() > 2000 else None


def read_csv(path: Path):
    "{k: [x, y, z]} voxel indices of the saved landmarks, None before the file exists."
    if not path.exists(): return None
    return {int(r["k"]): [float(r[f"{a}_index"]) for a in "xyz"] for r in csv.DictReader(path.read_text().splitlines())}


def test_niivue_annotator_in_voila(annotator_url, tmp_path):
    url, saved = annotator_url
    t0 = time.time()
    with webgl_page({"width": 1000, "height": 640}) as (page, seen):
        gl = page.evaluate("(() => { const g = document.createElement('canvas').getContext('webgl2');"
                           " return g ? g.getParameter(g.VERSION) : null })()")
        assert gl and "WebGL 2" in gl, f"no WebGL 2 in headless chromium: {gl}"
        page.goto(url, timeout=180_000)
        canvas = page.locator("canvas").first
        canvas.wait_for(timeout=180_000)
        assert wait_for(lambda: drawn(pixels(canvas.screenshot())), timeout=90) is not None, "the canvas stayed blank"
        page.wait_for_timeout(1000)
        with_overlay = pixels(canvas.screenshot())
        # the overlay: opacity 0.8 -> 0 with the slider's keys; the pixels of the heatmap blob turn from red to grey
        slider = page.locator(".widget-slider", has_text="opacity")
        slider.locator(".noUi-handle").first.focus()
        for _ in range(20):
            page.keyboard.press("ArrowLeft")
        assert "0.00" in slider.inner_text()
        moved = lambda a: a if (np.abs(a - with_overlay).sum(-1) > 60).sum() > 50 else None
        assert wait_for(lambda: moved(pixels(canvas.screenshot())), timeout=30) is not None, "the overlay stayed"
        page.wait_for_timeout(1000)
        without = pixels(canvas.screenshot())
        changed = np.abs(without - with_overlay).sum(-1) > 60
        red = with_overlay[..., 0] > with_overlay[..., 1:].max(-1) + 10          # reddish with the overlay,
        grey = np.ptp(without, axis=-1) < 20                                      # grey without it
        assert changed.sum() > 50 and (red & grey & changed).sum() > 0.9 * changed.sum(), \
            (changed.sum(), (red & grey & changed).sum())
        # a click on the marked block: the largest white patch (the crosshair is red, the rest grey or black; a
        # screenshot of a canvas of fractional width has a column of the white page at its right edge)
        from scipy import ndimage
        lab, n = ndimage.label(without.min(-1) > 200)
        assert n > 0, "the marked block is not drawn white"
        ys, xs = np.nonzero(lab == np.bincount(lab.ravel())[1:].argmax() + 1)
        assert 400 < len(xs) < 4000, f"the marked block: {len(xs)} white pixels"
        box = canvas.bounding_box()
        page.mouse.click(box["x"] + xs.mean(), box["y"] + ys.mean())
        P = wait_for(lambda: read_csv(saved), timeout=30)
        assert P is not None, f"no landmark saved to {saved} after the click"
        assert np.isfinite(P[0]).all() and not np.isfinite(P[1]).any(), P
        assert np.abs(np.array(P[0]) - MARK).max() <= 1.0, f"landmark 0 at {P[0]}, expected {MARK} (within 1 voxel)"
        info = page.locator(".widget-html", has_text="voxel (x, y, z)").first.inner_text()   # the location event
        assert "LPS mm" in info, info
        page.wait_for_function("document.body.innerText.includes('1 of 2 placed, saved')", timeout=30_000)
        page.wait_for_timeout(1500)                                    # the sphere of the new landmark is drawn
        shot = tmp_path / "niivue_annotator_voila.png"
        page.screenshot(path=str(shot))
        print(f"\nscreenshot of the NiiVue annotator in Voila: {shot} (landmark 0 at {P[0]}; "
              f"{time.time() - t0:.1f} s in the browser)")
        assert seen["external"] == [], f"requests outside localhost: {seen['external']}"
        assert seen["errors"] == [], f"console errors: {seen['errors']}"
