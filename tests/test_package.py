"""Package-level properties: light imports, layering, and the benchmark script runs."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# metrics and the static figures (viz) need only core and tps, so the estimators may use them (reports, figures)
LAYERS = ["core", "tps", "io", "markups", "data", "phantoms", "shape", "nets", "train", "metrics", "viz", "estimator",
          "discovery", "deepssm", "semisup", "widgets", "annotate", "niivue", "cli"]


def test_core_imports_without_plotting_stack():
    code = ("import sys, shape_nb.core, shape_nb.tps, shape_nb.phantoms, shape_nb.viz, shape_nb.widgets;"
            "bad = [m for m in ('plotly', 'ipywidgets', 'anywidget', 'itkwidgets', 'fastcore', 'nbdev')"
            " if m in sys.modules];"
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_lower_layers_never_import_higher_ones():
    for f in sorted((ROOT / "shape_nb").glob("*.py")):
        mod = f.stem
        if mod not in LAYERS:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            # nbdev writes `from .core import ...`; hand-written code may say `from shape_nb.core import ...`
            if node.level == 1:
                dep = node.module.split(".")[0]
            elif node.module.startswith("shape_nb."):
                dep = node.module.split(".")[1]
            else:
                continue
            # lazy imports inside functions are allowed only downwards as well
            assert dep in LAYERS, f"{mod} imports {dep}, which is missing from LAYERS"
            assert LAYERS.index(dep) < LAYERS.index(mod), f"{mod} imports higher layer {dep}"


def test_bench_tps_quick(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "tps.py"), "--quick", "--device", "cpu", "--out", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "shape_nb fit+warp" in r.stdout and (tmp_path / "tps_cpu_quick.json").exists()
