"""Which notebooks need a real data set that is not here.

A notebook that cannot run without a data set of ../shared/data (or $SHAPE_NB_DATA) says so in a code line

    # needs data: mice_vertebrae[, femurs ...]

`python tests/data_notebooks.py` prints one line per such notebook whose data set is missing (to stderr) and the
regular expression of their file names (to stdout), which `./run.sh test` passes to `nbdev_test --skip_file_re`.
Notebooks that only use real data in a few cells guard those cells themselves (`has_dataset(...)`).
"""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEEDS = re.compile(r"^#\s*needs data:\s*([\w, ]+)", re.M)


def needs(nb: Path) -> list:
    "The data sets a notebook declares with '# needs data: ...'."
    cells = json.loads(nb.read_text())["cells"]
    found = [m.group(1) for c in cells if c["cell_type"] == "code" for m in NEEDS.finditer("".join(c["source"]))]
    return sorted({name.strip() for f in found for name in f.split(",") if name.strip()})


def missing(nbs=ROOT / "nbs") -> dict:
    "{notebook path: [missing data sets]} for the notebooks under `nbs` that cannot run here."
    sys.path.insert(0, str(ROOT))
    from shape_nb.io import shared_data_dir
    root = shared_data_dir()
    out = {}
    for nb in sorted(Path(nbs).rglob("*.ipynb")):
        gone = [d for d in needs(nb) if root is None or not (root / d).is_dir()]
        if gone: out[nb] = gone
    return out


def skip_regex(found: dict) -> str:
    "nbdev_test's default skip pattern (hidden/underscore files) plus the notebooks in `found`."
    names = [re.escape(nb.name) for nb in found]
    return "^[_.]" + "".join(f"|^{n}$" for n in names)


if __name__ == "__main__":
    found = missing()
    for nb, gone in found.items():
        print(f"skipped {nb.relative_to(ROOT)}: needs the data set(s) {', '.join(gone)} (see README, 'Data sets'; "
              f"set SHAPE_NB_DATA to the folder that holds them)", file=sys.stderr)
    print(skip_regex(found))
