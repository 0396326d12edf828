"""The `shape_nb` console script as a user runs it: exit codes, outputs, messages."""
import json
import subprocess
import sys

import pytest


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-c", "import sys; from shape_nb.cli import main; sys.exit(main())", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_demo_writes_report_and_registers(tmp_path):
    r = run("demo", "--n", "4", "--size", "64", "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "out" / "tps_demo.json").read_text())
    assert res["rel_error_after"] < 0.2 * res["rel_error_before"]
    html = (tmp_path / "out" / "tps_demo.html").read_text()
    assert "<script" in html and 'src="https://cdn' not in html
    assert "mean relative registration error" in r.stdout


@pytest.mark.parametrize("args,msg", [
    (["demo", "--n", "1"], "at least 2"),
    (["demo", "--size", "8"], "at least 16"),
    (["demo", "--device", "cuda:7"], "device 'cuda:7'"),
])
def test_bad_input_exit_code_2(tmp_path, args, msg):
    r = run(*args, "--out", str(tmp_path / "o"))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert msg in r.stderr and "Traceback" not in r.stderr


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
    assert r.returncode == 0 and "demo" in r.stdout
