"""The report.html of every folder pipeline (discovery, DeepSSM train/predict, semi-supervised train/predict), made
from tiny runs and opened in headless chromium from the file: it draws its plotly figures, shows the summary table
first, logs no console error and requests nothing from any host (plotly.js is embedded once)."""
import json
import re
import time

import numpy as np
import pytest
from synthetic import blob_set, ellipse_set
from test_browser import chromium_page

from shape_nb.io import write_image, write_particles

DS_SMALL = dict(channels=(4, 4, 8, 8, 8), kernel_size=3, fc=(16, 8), pool_to=2, batch_size=4, epochs=1,
                progress=False, device="cpu")
SS_FAST = dict(rounds=1, epochs_pretrain=1, epochs_round=1, epochs_finetune=1, channels=(4, 8), batch_size=4,
               device="cpu", progress=False, z_threshold=5.0)
SCRIPT_TAG = "<script type='text/javascript'>"


def _discovery(root):
    from shape_nb.discovery import train_from_folder
    from shape_nb.phantoms import tps_phantoms
    (root / "disc").mkdir()
    for i, im in enumerate(tps_phantoms(6, 24, seed=1)[0]):
        write_image(root / "disc" / f"{i:02d}.png", im[0].numpy())
    for i in range(3):
        np.save(root / f"vol{i}.npy", np.random.default_rng(i).random((12, 12, 12)).astype(np.float32))
    kw = dict(epochs=1, channels=(4, 8), batch_size=4, device="cpu", progress=False)
    train_from_folder(root / "disc", root / "discovery", keep=3, n_landmarks=5, **kw)
    train_from_folder(str(root / "vol*.npy"), root / "discovery_3d", n_landmarks=4, **kw)
    return {"discovery": root / "discovery", "discovery_3d": root / "discovery_3d"}


def _deepssm(root):
    from shape_nb.deepssm import ellipsoid_dataset, predict_folder, train_from_folder
    data = ellipsoid_dataset(12, 16, 24, random_state=0)
    mm = ((data["points"] + 1) * 8 - 0.5) * np.array([2.0, 1.5, 1.0]) + np.array([-10.0, 5.0, 3.0])
    for sub in ("img", "pts", "img2"): (root / sub).mkdir()
    for i in range(12):
        write_image(root / "img" / f"s{i:02d}.nrrd", data["images"][i, 0].numpy(), spacing=(2.0, 1.5, 1.0),
                    origin=(-10.0, 5.0, 3.0))
        write_particles(root / "pts" / f"s{i:02d}.particles", mm[i])
    imgs, pts = sorted((root / "img").iterdir()), sorted((root / "pts").iterdir())
    train_from_folder(imgs[:9], pts[:9], root / "ds", validation_images=imgs[9:], validation_landmarks=pts[9:],
                      **DS_SMALL)
    predict_folder(root / "ds" / "deepssm.pt", imgs[9:], root / "ds_pred")
    ellipse_set(root / "img2", root / "pts2.csv", size=20, axes=(3, 7))   # 2D: ellipses, points in pixels
    train_from_folder(root / "img2", root / "pts2.csv", root / "ds2", **DS_SMALL)
    predict_folder(root / "ds2" / "deepssm.pt", root / "img2", root / "ds2_pred")
    return {k: root / k for k in ("ds", "ds_pred", "ds2", "ds2_pred")}


def _semisup(root):
    from shape_nb.semisup import predict_folder, train_from_folder
    for sub in ("lab", "json", "unl"): (root / sub).mkdir()
    blob_set(root / "lab", root / "unl", root / "json")
    train_from_folder(root / "lab", root / "json", root / "ss", unlabelled=root / "unl", size=(32, 32), **SS_FAST)
    predict_folder(root / "ss" / "semisup.pt", root / "unl", root / "ss_pred")
    return {"ss": root / "ss", "ss_pred": root / "ss_pred"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    "Output folders of tiny runs of every pipeline, and the seconds they took."
    root, t0 = tmp_path_factory.mktemp("runs"), time.perf_counter()
    out = {**_discovery(root), **_deepssm(root), **_semisup(root)}
    print(f"\ntiny runs: {time.perf_counter() - t0:.1f} s")
    return out


LISTINGS = {"discovery": ["discovery.pt", "importance.csv", "landmarks.csv", "report.html", "summary.json"],
            "ds": ["deepssm.pt", "report.html", "summary.json"],
            "ds_pred": ["landmarks.csv", "report.html", "s09.particles", "s10.particles", "s11.particles",
                        "summary.json"],
            "ds2": ["deepssm.pt", "report.html", "summary.json"],
            "ds2_pred": ["landmarks.csv", "report.html", "summary.json"],
            "ss": ["report.html", "semisup.pt", "summary.json", "unlabelled_landmarks.csv"],
            "ss_pred": ["landmarks.csv", "report.html", "summary.json"]}
HEADINGS = {"discovery": ["Registration example", "Landmark importance", "Training", "Kept landmarks"],
            "discovery_3d": ["Registration example", "middle axial slice"],
            "ds": ["Training", "RMSE per stage", "Error per correspondence", "RMSE, validation pairs"],
            "ds_pred": ["Predictions", "Distance to the training mean shape"],
            "ds2": ["Error per correspondence", "RMSE, validation pairs"],
            "ds2_pred": ["Predictions", "farthest from the mean shape"],
            "ss": ["Training", "Pseudo labels per self-training round", "frac_masked_landmarks", "Landmarks"],
            "ss_pred": ["Landmarks", "Doubt per image", "most doubtful image"]}


def test_reports_are_single_self_contained_files(runs):
    for name, out in runs.items():
        if name in LISTINGS:
            # the results, and the list of them that the next --overwrite run replaces as a set; no lock, no staging
            assert sorted(p.name for p in out.iterdir()) == [".results.json"] + LISTINGS[name], name
        html = (out / "report.html").read_text()
        assert html.count(SCRIPT_TAG) == 1, name                                   # plotly.js inside, once
        assert not re.search(r"<(script|link|img|iframe)[^>]*(src|href)=", html), name  # nothing linked
        assert 0 < html.index("<table class='summary'>") < html.index("Plotly.newPlot"), name   # the table first
        summary = json.loads((out / "summary.json").read_text())                  # ... and no dump of summary.json
        assert "<pre>" not in html and not [k for k in summary if "_" in k and f'"{k}":' in html], name
        for s in HEADINGS[name]:
            assert s in html, (name, s)


def test_reports_open_offline_in_chromium(runs, tmp_path):
    with chromium_page({"width": 1200, "height": 900}) as (page, seen):
        web = []

        def refuse(route):                       # from a file, every http(s) / ws request is a failure
            url = route.request.url
            if url.startswith(("file:", "data:", "blob:", "about:")):
                route.continue_()
            else:
                web.append(url)
                route.abort()
        page.route("**/*", refuse)
        for name, out in runs.items():
            page.goto((out / "report.html").as_uri(), wait_until="load", timeout=60_000)
            n_figs = (out / "report.html").read_text().count("Plotly.newPlot")
            page.wait_for_function("n => { const p = document.querySelectorAll('.js-plotly-plot'); return p.length"
                                   " === n && Array.from(p).every(d => d.querySelector('svg.main-svg')); }",
                                   arg=n_figs, timeout=30_000)
            assert n_figs >= 1 and page.locator("table.summary").count() == 1, name
            assert page.evaluate("document.querySelector('table.summary').compareDocumentPosition("
                                 "document.querySelector('.js-plotly-plot')) & Node.DOCUMENT_POSITION_FOLLOWING"), name
            page.wait_for_timeout(200)
            shot = tmp_path / f"{name}_report.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"\nscreenshot of the {name} report: {shot}")
            assert web == [] and seen["external"] == [], (name, web, seen["external"])
            assert seen["errors"] == [], (name, seen["errors"])
