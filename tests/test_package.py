"""Package-level properties: light imports, layering, and the benchmark script runs."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["core", "tps", "io", "data", "phantoms", "shape", "nets", "train", "discovery", "deepssm", "semisup",
          "metrics", "viz", "widgets", "cli"]


def test_core_imports_without_plotting_stack():
    code = ("import sys, shape_nb.core, shape_nb.tps, shape_nb.phantoms, shape_nb.viz, shape_nb.widgets;"
            "bad = [m for m in ('plotly', 'ipywidgets', 'anywidget', 'itkwidgets', 'fastcore', 'nbdev') if m in sys.modules];"
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_lower_layers_never_import_higher_ones():
    for f in sorted((ROOT / "shape_nb").glob("*.py")):
        mod = f.stem
        if mod not in LAYERS:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("shape_nb."):
                dep = node.module.split(".")[1]
                # lazy imports inside functions are allowed only downwards as well
                assert LAYERS.index(dep) < LAYERS.index(mod), f"{mod} imports higher layer {dep}"


def test_bench_tps_quick(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "tps.py"), "--quick", "--device", "cpu", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "shape_nb fit+warp" in r.stdout and (tmp_path / "tps_cpu_quick.json").exists()
