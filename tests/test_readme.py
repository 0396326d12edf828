"""README.md is generated from nbs/index.ipynb (the home page): this test keeps the two equal.

Regenerate with `python tests/test_readme.py --write` (or `./run.sh readme`).
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def render_readme(nb_path=ROOT / "nbs" / "index.ipynb") -> str:
    "Markdown of the home page: markdown cells as they are, visible code cells as python blocks."
    nb = json.loads(Path(nb_path).read_text(encoding="utf-8"))
    parts = []
    for cell in nb["cells"]:
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        lines = src.splitlines()
        directives = [l for l in lines if l.startswith("#|")]
        if any(d.replace(" ", "") in ("#|hide", "#|hide_input") for d in directives):
            continue
        body = "\n".join(l for l in lines if not l.startswith("#|")).strip("\n")
        if not body:
            continue
        parts.append(body if cell["cell_type"] == "markdown" else f"```python\n{body}\n```")
    head = "<!-- generated from nbs/index.ipynb: edit the notebook, then run ./run.sh readme -->\n\n"
    return head + "\n\n".join(parts) + "\n"


def test_readme_matches_index():
    want = render_readme()
    got = (ROOT / "README.md").read_text(encoding="utf-8")
    assert got == want, "README.md is out of date with nbs/index.ipynb: run ./run.sh readme"


def test_readme_quick_start_has_two_commands():
    text = render_readme()
    block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    cmds = [l for l in block.splitlines() if l.strip() and not l.strip().startswith("#")]
    assert [c.split("#")[0].split() for c in cmds] == [["./run.sh"], ["./run.sh", "test"]]


if __name__ == "__main__":
    if "--write" in sys.argv:
        (ROOT / "README.md").write_text(render_readme(), encoding="utf-8")
        print("wrote README.md")
    else:
        print(render_readme())
