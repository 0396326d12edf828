#!/usr/bin/env bash
# shape_nb: set up and run.
#   ./run.sh          create .venv, install, run the demo on the embedded phantoms
#   ./run.sh test     export/clean checks, ruff, notebook tests, pytest (ends with pytest's summary line)
#   ./run.sh bench    every bench/*.py as a CPU smoke run (--quick --device cpu; tables + bench/results/*.json):
#                     TPS vs kornia and torch-tps, discovery training throughput, DeepSSM speed, semi-supervised
#                     wall time, DDP scaling under torchrun, the discovery phantom experiment, DeepSSM on the femurs,
#                     DeepSSM in 2D and its augmentation (those that need ../shared/data skip without it). Arguments
#                     replace the defaults for all of them, so only the common options (bench/benchlib.py: --device
#                     --threads --quick --out --seed): ./run.sh bench --device cuda runs them at full size on a GPU
#                     (each bench/*.py docstring gives its own command and options)
#   ./run.sh readme   regenerate README.md from nbs/index.ipynb
#   ./run.sh docs     build the documentation site offline into _docs/html (Sphinx + myst-nb over nbs/)
#   ./run.sh lab      JupyterLab on the notebooks (nbs/); their kernel (python3) is this venv's python. It runs
#                     offline: no news feed, no update check, no PyPI extension manager. Arguments go to
#                     `jupyter lab` (later options win), e.g. ./run.sh lab --no-browser --port 8899
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

setup() {
  local stamp="$VENV/.installed"
  if [ "$cmd" = test ]; then ensure_chromium; fi   # the browser tests (tests/test_browser.py, tests/test_docs.py)
  if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$stamp" -nt setup.py ] && [ "$stamp" -nt settings.ini ]; then
    return
  fi
  echo "== setting up $VENV (torch 2.13.0, then shape_nb[dev])"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
  touch "$stamp"
}

ensure_chromium() {  # Debian's chromium for the headless browser tests (playwright drives it; no browser download)
  if [ -n "${CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then return; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing chromium (apt-get) for the browser tests"
    if apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; then return; fi
    echo "warning: apt-get could not install chromium; the browser tests will be skipped" >&2
  else
    echo "note: no chromium found, the browser tests will be skipped; install it with 'sudo apt-get install chromium'" \
         "(or set CHROMIUM=/path/to/chromium)" >&2
  fi
}

check_unchanged() {  # $1: label, $2: folder, rest: command that may rewrite files in the folder
  local label=$1 dir=$2; shift 2
  local before after
  before=$(mktemp -d)
  cp -r "$dir" "$before/"
  "$@" >/dev/null
  if ! diff -r -q --exclude=__pycache__ "$before/$(basename "$dir")" "$dir" >/dev/null; then
    echo "FAILED: $label changed files:"
    diff -r -q --exclude=__pycache__ "$before/$(basename "$dir")" "$dir" || true
    rm -rf "$before"
    return 1
  fi
  rm -rf "$before"
  echo "ok: $label leaves no diff"
}

cmd=${1:-demo}
[ $# -gt 0 ] && shift
setup
export PATH="$PWD/$VENV/bin:$PATH"
case "$cmd" in
  demo)
    shape_nb demo "$@"
    ;;
  test)
    export MPLBACKEND=Agg PYTHONHASHSEED=0
    check_unchanged "nbdev_export (notebooks and module in sync)" shape_nb nbdev_export
    check_unchanged "nbdev_clean (notebooks clean)" nbs nbdev_clean
    echo "== ruff (lint, 120 columns: nbs/ tests/ bench/)"
    ruff check --quiet nbs tests bench
    echo "== nbdev_test"
    skip=$(python tests/data_notebooks.py)   # notebooks whose real data set is absent: one line each, then skipped
    SHAPE_NB_QUICK=1 nbdev_test --n_workers 2 --timing --skip_file_re "$skip"   # tutorials run their tiny version
    echo "== pytest"
    python -m pytest tests/ "$@"
    ;;
  bench)
    args=("$@"); [ ${#args[@]} -eq 0 ] && args=(--quick --device cpu)
    for b in tps throughput deepssm_speed semisup ddp_scaling discovery deepssm deepssm_2d deepssm_augment; do
      pre=()
      case "$b" in
        discovery) pre=(phantoms --no-progress) ;;   # the phantom experiment (no data needed)
        deepssm) pre=(--no-progress) ;;
      esac
      echo; echo "== python bench/$b.py ${pre[*]}${pre[*]:+ }${args[*]}"
      python "bench/$b.py" "${pre[@]}" "${args[@]}"
    done
    echo; echo "== bench: all $((SECONDS / 60)) min $((SECONDS % 60)) s"
    ;;
  readme)
    python tests/test_readme.py --write
    ;;
  docs)
    python nbs/_sphinx/build.py --jobs 2 "$@"
    ;;
  lab)
    # the venv's kernelspecs come first, so the notebooks' `python3` kernel is the venv's python (shape_nb importable)
    export JUPYTER_PATH="$PWD/$VENV/share/jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}"
    root=(); [ "$(id -u)" = 0 ] && root=(--allow-root)   # containers often run as root
    exec jupyter lab --notebook-dir=nbs --MappingKernelManager.default_kernel_name=python3 \
      --LabApp.news_url=None --LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate \
      --LabApp.extension_manager=readonly "${root[@]}" "$@"
    ;;
  *)
    echo "usage: ./run.sh [demo|test|bench|readme|docs|lab] [args...]" >&2
    exit 2
    ;;
esac
