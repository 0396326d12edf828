"""LandmarkAnnotator in a real browser: Voila serves a notebook with an annotator on two synthetic PNGs; headless
chromium (Debian's, driven by Playwright) clicks at the screen positions of known pixels (computed from plotly's
axes in the page), selects and moves a landmark, goes to the next image with a key, and the LabelMe files the
kernel saved must hold the clicked positions to half a pixel. The page must make no request outside localhost and
log no console error. Skips when chromium or Voila is missing. Set SHAPE_NB_ANNOTATOR_SCREENSHOT=path to keep a
copy of the screenshot (the docs picture, nbs/images/annotator.png, comes from such a run)."""
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from shape_nb.io import read_labelme, read_landmarks_csv, write_image
from test_browser import chromium_page, find_chromium, voila_app

NAMES = ["tip", "left", "right"]
CELL = """\
from pathlib import Path
from shape_nb.annotate import LandmarkAnnotator
ann = LandmarkAnnotator.from_folder(Path("images"), Path("labels"), ["tip", "left", "right"], height=460)
ann"""
PLOT = "document.querySelector('.shape-nb-annotator .js-plotly-plot')"
INFO = "document.querySelector('.shape-nb-annotator .widget-html').innerText"     # the line above the image
# the screen position of image position (x, y), and back: plotly's axes map data to pixels of the plot area, which
# starts at the axis' _offset in the figure
TO_SCREEN = f"""([x, y]) => {{
  const gd = {PLOT}, fl = gd._fullLayout, r = gd.getBoundingClientRect();
  return [r.left + fl.xaxis._offset + fl.xaxis.d2p(x), r.top + fl.yaxis._offset + fl.yaxis.d2p(y)];
}}"""
TO_IMAGE = f"""([sx, sy]) => {{
  const gd = {PLOT}, fl = gd._fullLayout, r = gd.getBoundingClientRect();
  return [fl.xaxis.p2d(sx - r.left - fl.xaxis._offset), fl.yaxis.p2d(sy - r.top - fl.yaxis._offset)];
}}"""


def synthetic_png(path: Path, seed: int, shape=(60, 80)):
    "A grey PNG with a few blobs, so that the picture shows something."
    rng = np.random.default_rng(seed)
    H, W = shape
    yy, xx = np.mgrid[0:H, 0:W]
    centres = rng.uniform([10, 10], [W - 10, H - 10], (4, 2))
    img = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 30.0) for x, y in centres)
    write_image(path, (255 * (0.2 + 0.6 * img / img.max() + 0.1 * rng.random(shape))).astype(np.uint8))


@pytest.fixture
def annotator_url(tmp_path):
    pytest.importorskip("voila", reason="no Voila installed (a dev requirement: pip install -e '.[dev]')")
    if find_chromium() is None:
        pytest.skip("no chromium found (install it: apt-get install chromium, or set CHROMIUM=/path/to/chromium)")
    (tmp_path / "images").mkdir()
    for i in range(2): synthetic_png(tmp_path / "images" / f"img{i}.png", i)
    with voila_app(tmp_path, CELL, "annotate.ipynb") as url: yield url


def wait_points(path: Path, n: int, timeout: float = 30.0):
    "The (points, labels) of LabelMe file `path` once it holds `n` points (the kernel saves after each click)."
    t0 = time.time()
    while True:
        try:
            P, labels = read_labelme(path)
            if len(P) == n: return P, labels
        except (OSError, ValueError):
            pass
        if time.time() - t0 > timeout:
            pytest.fail(f"{path} did not get {n} points within {timeout} s")
        time.sleep(0.2)


def test_annotator_clicks_in_voila(annotator_url, tmp_path):
    "Clicks place and move landmarks (files checked to half a pixel), keys change image and undo; all offline."
    with chromium_page({"width": 1000, "height": 720}) as (page, seen):
        t0 = time.time()
        page.goto(annotator_url, timeout=180_000)
        page.wait_for_selector(".shape-nb-annotator .js-plotly-plot .main-svg", timeout=180_000)
        page.wait_for_selector(".shape-nb-annotator .js-plotly-plot .imagelayer image", state="attached",
                               timeout=60_000)
        page.wait_for_timeout(300)
        print(f"\npage ready in {time.time() - t0:.1f} s")

        def click(x, y):
            "Click at the whole screen pixel nearest to image position (x, y); return the image position clicked."
            sx, sy = (round(v) for v in page.evaluate(TO_SCREEN, [x, y]))
            page.mouse.move(sx, sy)
            page.wait_for_timeout(120)     # plotly takes a click's point from its hover, computed at most every 50 ms
            page.mouse.click(sx, sy)
            return page.evaluate(TO_IMAGE, [sx, sy])

        targets = np.array([[40.3, 12.2], [18.6, 44.8], [61.4, 43.7]])     # image positions (x, y)
        labels_dir = tmp_path / "labels"
        clicked = []
        for k, (x, y) in enumerate(targets):
            clicked.append(click(x, y))
            P, labels = wait_points(labels_dir / "img0.json", k + 1)
        clicked = np.array(clicked)
        assert np.abs(clicked - targets).max() < 0.2                       # a screen pixel is ~1/7 image pixel
        assert labels == NAMES
        assert np.abs(P - clicked).max() <= 0.5, (P, clicked)              # the pixel clicked: within half a pixel
        np.testing.assert_array_equal(P, np.round(clicked))
        P0 = P
        page.wait_for_function(f"{PLOT}.data[1].x.length === 3", timeout=30_000)
        assert page.evaluate(f"Array.from({PLOT}.data[1].text)") == NAMES

        # select "left" by a click near it (2 pixels off), then click where it belongs: it moves
        click(targets[1, 0] + 1.6, targets[1, 1] - 1.2)
        page.wait_for_function(f"{PLOT}.data[2].x.length === 1", timeout=30_000)   # the ring of the selection
        page.wait_for_function(f"{INFO}.includes('click where left belongs')", timeout=30_000)
        page.wait_for_timeout(300)
        shot = tmp_path / "annotator_voila.png"
        page.locator(".shape-nb-annotator").screenshot(path=str(shot))
        print(f"screenshot of the annotator in Voila: {shot}")
        if os.environ.get("SHAPE_NB_ANNOTATOR_SCREENSHOT"):
            shutil.copy(shot, os.environ["SHAPE_NB_ANNOTATOR_SCREENSHOT"])
        click(25.2, 50.1)
        t1 = time.time()
        while True:
            P, _ = wait_points(labels_dir / "img0.json", 3)
            if np.abs(P[1] - [25, 50]).max() <= 0.5 or time.time() - t1 > 30: break
            time.sleep(0.2)
        np.testing.assert_array_equal(P, [P0[0], [25, 50], P0[2]])

        # keys: "n" shows the next image (the annotator has the focus after the clicks); a click places on it
        source = page.evaluate(f"{PLOT}.data[0].source")
        page.keyboard.press("n")
        page.wait_for_function(f"{PLOT}.data[0].source !== {source!r}", timeout=30_000)
        page.wait_for_function(f"{INFO}.startsWith('img1.png')", timeout=30_000)
        click(30.0, 20.0)
        P, labels = wait_points(labels_dir / "img1.json", 1)
        assert labels == ["tip"] and np.array_equal(P, [[30.0, 20.0]])
        page.keyboard.press("z")                                          # undo: the file of image 1 goes
        t1 = time.time()
        while (labels_dir / "img1.json").exists() and time.time() - t1 < 30: time.sleep(0.2)
        assert not (labels_dir / "img1.json").exists()
        names, pts = read_landmarks_csv(labels_dir / "landmarks.csv")
        assert names == ["img0.png"] and np.array_equal(pts[0], [P0[0], [25, 50], P0[2]])
        print(f"clicks, selection, keys and files checked in {time.time() - t0:.1f} s")
        assert seen["external"] == [], f"requests outside localhost: {seen['external']}"
        assert seen["errors"] == [], f"console errors: {seen['errors']}"
