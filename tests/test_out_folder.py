"""Concurrent and interrupted command-line runs: a second run into the same --out is refused at start; a run killed
while it trains resumes exactly (`deepssm train`, `semisup train`; `discover` is in test_resume.py); a run killed
while it writes its results leaves the old set or the new one, never a mix. Every kill is a real SIGKILL of the
CLI process, sent from inside it at a chosen point (a patched internal function), so no test depends on timing."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from synthetic import blob_set, ellipse_set

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
CLI = [sys.executable, "-c", "import sys; from shape_nb.cli import main; sys.exit(main())"]

# Run the CLI after patching one internal function so that the process SIGKILLs itself at a chosen moment.
KILL = """
import os, signal, sys
import shape_nb.train as train, shape_nb.estimator as estimator
from shape_nb.cli import main
where, arg = sys.argv[1], sys.argv[2]
def die(): os.kill(os.getpid(), signal.SIGKILL)
if where == "epoch":                     # right after the training state of stage `arg` ('stage:epoch') is on disk
    stage, at = arg.split(":"); real = train._save_state
    def save(path, *a):
        real(path, *a)
        if f"_{stage}." in str(path) and a[-2] == int(at) and not a[-1]: die()
    train._save_state = save
elif where == "report":                  # while the results are written (the report is the last file)
    import importlib; mod = importlib.import_module("shape_nb." + arg)
    def report(*a, **k): die()
    mod.write_report = report
elif where == "commit":                  # after `arg` result files have been moved into place
    real, n = estimator.os.replace, [0]
    def replace(a, b):
        if ".incoming" not in str(b):
            n[0] += 1
            if n[0] > int(arg): die()
        real(a, b)
    estimator.os.replace = replace
sys.argv = ["shape_nb"] + sys.argv[3:]
sys.exit(main())
"""


def run(args, **kw):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, env=ENV, timeout=600, **kw)


def killed(where, arg, args):
    "Run the CLI with `args`, SIGKILLed at `where`; assert it was killed."
    r = subprocess.run([sys.executable, "-c", KILL, where, arg] + [str(a) for a in args], capture_output=True,
                       text=True, env=ENV, timeout=600)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    "Small 2D sets: ellipse images + a correspondence CSV (DeepSSM); PNGs + LabelMe files (semisup, discovery)."
    root = tmp_path_factory.mktemp("data")
    for sub in ("ell", "lab", "unl"): (root / sub).mkdir()
    ellipse_set(root / "ell", root / "ell.csv")
    blob_set(root / "lab", root / "unl", root / "lab")
    return root


def deepssm_args(d, out):
    return ["deepssm", "train", "--images", d / "ell", "--landmarks", d / "ell.csv", "--epochs", 8, "--batch-size", 4,
            "--device", "cpu", "--seed", 1, "--out", out]


def semisup_args(d, out):
    return ["semisup", "train", "--labelled", d / "lab", "--unlabelled", d / "unl", "--size", 32, 32,
            "--epochs-pretrain", 4, "--epochs-round", 2, "--epochs-finetune", 2, "--rounds", 1, "--device", "cpu",
            "--seed", 1, "--out", out]


def discover_args(d, out):
    return ["discover", d / "unl", "--k", 3, "--epochs", 2, "--batch-size", 2, "--device", "cpu", "--seed", 1,
            "--out", out]


def results(out, report=True):
    """The visible result files of a run folder, name -> bytes (the checkpoint is compared through its weights; the
    report holds random plot ids, so it is left out when two runs are compared)."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and not p.name.startswith(".")
            and p.suffix != ".pt" and (report or p.name != "report.html")}


def weights(path):
    import torch
    return torch.load(path, weights_only=True)["state_dict"]


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa)


# ---------------------------------------------------------------- one run at a time
@pytest.mark.parametrize("command", ["discover", "deepssm", "semisup"])
def test_second_run_into_the_same_out_is_refused_at_start(data, tmp_path, command):
    from shape_nb.estimator import _lock, _unlock
    out = tmp_path / "out"
    out.mkdir()
    held = _lock(out)                                      # as a first run holds it while it trains
    try:
        args = {"discover": discover_args, "deepssm": deepssm_args, "semisup": semisup_args}[command](data, out)
        r = run(args + ["--overwrite"])
        assert r.returncode == 2 and f"is in use by another run (pid {os.getpid()}" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and sorted(p.name for p in out.iterdir()) == [".lock"]   # nothing written
    finally:
        _unlock(out, held)
    assert run(args).returncode == 0 and not (out / ".lock").exists()   # free once released; no lock file left


def test_a_real_concurrent_run_is_refused_and_a_crash_frees_the_lock(data, tmp_path):
    out = tmp_path / "out"
    args = CLI + [str(a) for a in semisup_args(data, out)]
    args[args.index("--epochs-pretrain") + 1] = "400"       # long enough to be caught while it trains
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        t0 = time.time()
        while not (out / ".train_state").is_dir() and time.time() - t0 < 120: time.sleep(0.05)
        r = run(semisup_args(data, out) + ["--overwrite"])
        assert r.returncode == 2 and f"in use by another run (pid {p.pid}" in r.stderr, r.stderr
        r = run(semisup_args(data, out) + ["--resume"])     # nor may it be resumed while it runs
        assert r.returncode == 2 and "in use by another run" in r.stderr
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert (out / ".lock").exists()                         # a crashed run leaves the file, but not the lock
    r = run(semisup_args(data, out) + ["--overwrite"])
    assert r.returncode == 0, r.stderr
    assert not (out / ".lock").exists() and not (out / ".train_state").exists() and not (out / ".incoming").exists()


# ---------------------------------------------------------------- kill and resume
def test_kill_and_resume_deepssm_train(data, tmp_path):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert run(deepssm_args(data, ref)).returncode == 0
    killed("epoch", "base:2", deepssm_args(data, cut))
    assert not (cut / "deepssm.pt").exists() and (cut / ".train_state" / "train_state_base.pt").exists()
    r = run(deepssm_args(data, cut) + ["--resume"])
    assert r.returncode == 0, r.stderr
    assert "resuming from epoch 3 of 8" in r.stdout                  # not from scratch
    a, b = json.loads((ref / "summary.json").read_text()), json.loads((cut / "summary.json").read_text())
    assert a["stages"] == b["stages"]                       # same epochs, best epoch, final RMSEs
    assert same_weights(ref / "deepssm.pt", cut / "deepssm.pt") and not (cut / ".train_state").exists()


def test_kill_and_resume_semisup_train_across_stages(data, tmp_path):
    from shape_nb.semisup import SemiSupervisedDetector
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert run(semisup_args(data, ref)).returncode == 0
    killed("epoch", "round_1:0", semisup_args(data, cut))    # pre-training done, killed in self-training
    st = cut / ".train_state"
    assert (st / "train_state_pretrain.pt").exists() and (st / "train_state_round_1.pt").exists()
    r = run(semisup_args(data, cut) + ["--resume"])
    assert r.returncode == 0, r.stderr
    da, db = SemiSupervisedDetector.load(ref / "semisup.pt"), SemiSupervisedDetector.load(cut / "semisup.pt")
    assert "resuming from epoch 1 of 2" in r.stdout and "train_state_round_1.pt" in r.stdout   # not from scratch
    for stage in da.history_:
        assert da.history_[stage].column("train_loss") == db.history_[stage].column("train_loss"), stage
    assert same_weights(ref / "semisup.pt", cut / "semisup.pt")
    assert (ref / "unlabelled_landmarks.csv").read_text() == (cut / "unlabelled_landmarks.csv").read_text()


# ---------------------------------------------------------------- never a half set of results
def test_killed_while_writing_results_keeps_the_old_set(data, tmp_path):
    out = tmp_path / "out"
    assert run(deepssm_args(data, out)).returncode == 0
    old, old_w = results(out), weights(out / "deepssm.pt")
    args = deepssm_args(data, out) + ["--overwrite"]
    args[args.index("--seed") + 1] = 2                      # a different run: different results
    killed("report", "deepssm", args)                      # killed after the checkpoint, before the report
    assert (out / ".incoming" / "deepssm.pt").exists()      # the new files were staged ...
    assert results(out) == old and all((weights(out / "deepssm.pt")[k] == v).all() for k, v in old_w.items())
    r = run(args[:-1])                                      # ... and the next run on the folder drops them
    assert r.returncode == 2 and "already holds results" in r.stderr and not (out / ".incoming").exists()
    assert results(out) == old


def test_killed_while_moving_results_into_place_ends_with_the_new_set(data, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert run(discover_args(data, ref)).returncode == 0
    args = discover_args(data, out)
    args[args.index("--epochs") + 1] = 1                    # the old set: another run
    assert run(args).returncode == 0
    old = results(out)
    killed("commit", "2", discover_args(data, out) + ["--overwrite"])   # two of five files moved, then killed
    moved = results(out, report=False)
    assert moved != results(ref, report=False) and moved["landmarks.csv"] == old["landmarks.csv"]   # mid-commit ...
    assert (out / ".incoming" / ".complete").exists()
    r = run(discover_args(data, out))                       # ... until the next command on it finishes the commit
    assert r.returncode == 2 and "already holds results" in r.stderr
    assert results(out, report=False) == results(ref, report=False) and not (out / ".incoming").exists()
    assert same_weights(ref / "discovery.pt", out / "discovery.pt")
