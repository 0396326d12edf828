"""A user's clone has no ../shared/data: everything that needs a real data set must skip, with one line saying which.

These tests point SHAPE_NB_DATA at an empty folder (as an explicit setting it wins over ../shared/data) and run
what `./run.sh test` runs: the notebooks that declare '# needs data: ...' are listed and skipped by nbdev_test,
and the module notebooks that use real data in a few cells pass without it."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBDEV_TEST = Path(sys.executable).with_name("nbdev_test")


def _env(tmp_path):
    empty = tmp_path / "no_data"; empty.mkdir(exist_ok=True)
    return {**os.environ, "SHAPE_NB_DATA": str(empty), "SHAPE_NB_QUICK": "1"}


def test_tutorials_are_skipped_without_their_data(tmp_path):
    r = subprocess.run([sys.executable, "tests/data_notebooks.py"], cwd=ROOT, env=_env(tmp_path), capture_output=True,
                       text=True, check=True)
    lines = r.stderr.strip().splitlines()
    assert any("tutorials/discovery_mice.ipynb" in l and "mice_vertebrae" in l for l in lines), r.stderr
    assert any("tutorials/semisup_cephalograms.ipynb" in l and "cephalograms_hamedan" in l for l in lines), r.stderr
    assert all(l.startswith("skipped ") and "SHAPE_NB_DATA" in l for l in lines), r.stderr
    skip = r.stdout.strip()
    t = subprocess.run([str(NBDEV_TEST), "--path", "nbs/tutorials", "--skip_file_re", skip, "--do_print"], cwd=ROOT,
                       env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert t.returncode == 0, t.stdout + t.stderr
    assert "discovery_mice" not in t.stdout + t.stderr and "semisup_cephalograms" not in t.stdout + t.stderr


@pytest.mark.parametrize("nb", ["02_io.ipynb", "03_data.ipynb"])
def test_module_notebooks_run_without_data(nb, tmp_path):
    "The notebooks that read real data in a few cells pass with an empty data folder (those cells print 'skipped')."
    t = subprocess.run([str(NBDEV_TEST), "--path", f"nbs/{nb}"], cwd=ROOT, env=_env(tmp_path), capture_output=True,
                       text=True, timeout=600)
    assert t.returncode == 0, t.stdout[-3000:] + t.stderr[-3000:]
