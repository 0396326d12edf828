"""The `shape_nb` console script as a user runs it: exit codes, outputs, messages."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-c", "import sys; from shape_nb.cli import main; sys.exit(main())", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=600)


def test_tps_demo_writes_report_and_registers(tmp_path):
    r = run("tps-demo", "--n", "4", "--size", "64", "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "out" / "tps_demo.json").read_text())
    assert res["rel_error_after"] < 0.2 * res["rel_error_before"]
    html = (tmp_path / "out" / "tps_demo.html").read_text()
    assert "<script" in html and 'src="https://cdn' not in html
    assert "mean relative registration error" in r.stdout


def test_discovery_demo_small(tmp_path):
    r = run("demo", "--n", "8", "--size", "32", "--k", "6", "--keep", "4", "--epochs", "2",
            "--out", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert len(s["kept"]) == 4 and s["heldout_rel_error_after"] > 0 and s["control_point_to_nearest_kept_px"] > 0


def _png_folder(folder, n=4, size=(24, 24)):
    from shape_nb.io import write_image
    from shape_nb.phantoms import tps_phantoms
    imgs, _ = tps_phantoms(n, size, seed=1)
    for i, im in enumerate(imgs):
        write_image(folder / f"{i:02d}.png", im[0].numpy())
    return folder


def test_discover_folder_outputs(tmp_path):
    src = _png_folder(tmp_path / "in")
    out = tmp_path / "out"
    r = run("discover", str(src), "--k", "5", "--keep", "3", "--epochs", "1", "--batch-size", "4", "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out / "landmarks.csv")))
    assert len(rows) == 4 * 5 and set(rows[0]) >= {"image", "k", "x_index", "y_index", "x_norm", "y_norm"}
    assert {row["image"] for row in rows} == {f"{i:02d}.png" for i in range(4)}
    x_idx, x_norm = float(rows[0]["x_index"]), float(rows[0]["x_norm"])
    assert abs((2 * x_idx + 1) / 24 - 1 - x_norm) < 1e-9          # voxel and normalised columns agree
    imp = list(csv.DictReader(open(out / "importance.csv")))
    assert len(imp) == 5 and sum(int(r["kept"]) for r in imp) == 3
    assert (out / "discovery.pt").stat().st_size > 0 and (out / "report.html").stat().st_size > 1e5


def test_discover_3d_npy(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "v").mkdir()
    for i in range(3):
        np.save(tmp_path / "v" / f"v{i}.npy", rng.random((12, 12, 12)).astype(np.float32))
    r = run("discover", str(tmp_path / "v"), "--k", "4", "--epochs", "1", "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert "z_index" in open(tmp_path / "o" / "landmarks.csv").readline()


def _bad_cases(tmp_path):
    (tmp_path / "empty").mkdir()
    mixed = _png_folder(tmp_path / "mixed", 2)
    _png_folder(tmp_path / "mixed_extra", 1, (30, 30))
    (tmp_path / "mixed_extra" / "00.png").rename(mixed / "zz.png")
    dims = tmp_path / "dims"; dims.mkdir()
    np.save(dims / "a.npy", np.zeros((8, 8), np.float32)); np.save(dims / "b.npy", np.zeros((8, 8, 8), np.float32))
    nan = tmp_path / "nan"; nan.mkdir()
    np.save(nan / "a.npy", np.ones((8, 8), np.float32)); bad = np.ones((8, 8), np.float32); bad[2, 3] = np.nan
    np.save(nan / "b.npy", bad)
    good = _png_folder(tmp_path / "good", 3)
    used = tmp_path / "used"; used.mkdir(); (used / "old.txt").write_text("results")
    return [
        (["discover", str(tmp_path / "empty")], "empty"),
        (["discover", str(tmp_path / "nothing_here" / "*.png")], "nothing_here"),
        (["discover", str(mixed)], "size"),
        (["discover", str(dims)], "cannot mix 2D and 3D"),
        (["discover", str(nan)], "NaN"),
        (["discover", str(good), "--out", str(used)], "--overwrite"),
        (["discover", str(good), "--k", "4", "--keep", "9"], "keep must be between 1 and n_landmarks"),
        (["discover", str(good), "--k", "0"], "n_landmarks must be >= 1"),
        (["tps-demo", "--n", "1"], "at least 2"),
        (["tps-demo", "--size", "8"], "at least 16"),
        (["tps-demo", "--device", "cuda:7"], "device 'cuda:7'"),
        (["demo", "--n", "4"], "at least 8"),
    ]


def test_bad_input_exit_code_2(tmp_path):
    for args, msg in _bad_cases(tmp_path):
        if "--out" not in args: args = args + ["--out", str(tmp_path / "o_unused")]
        r = run(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


def test_help_and_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("shape_nb ")
    assert run("--help").returncode == 0


def test_console_script_installed():
    import shutil
    exe = shutil.which("shape_nb")
    if exe is None:
        pytest.skip("shape_nb console script not on PATH (package not pip-installed)")
    r = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "discover" in r.stdout and "demo" in r.stdout
