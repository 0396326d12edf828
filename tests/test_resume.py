"""A training process killed mid-run and resumed with --resume ends exactly where the uninterrupted run ends."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
CLI = [sys.executable, "-c", "import sys; from shape_nb.cli import main; sys.exit(main())"]


def _pngs(folder, n=6, size=32):
    from shape_nb.io import write_image
    from shape_nb.phantoms import tps_phantoms
    folder.mkdir()
    imgs, _ = tps_phantoms(n, size, seed=2)
    for i, im in enumerate(imgs):
        write_image(folder / f"{i:02d}.png", im[0].numpy())
    return folder


def _epoch(state):
    try:
        return int(torch.load(state, weights_only=True)["epoch"])
    except Exception:       # not there yet
        return -1


def test_kill_and_resume_discovery_bit_for_bit(tmp_path):
    src = _pngs(tmp_path / "in")
    epochs = 12
    args = CLI + ["discover", str(src), "--k", "4", "--epochs", str(epochs), "--batch-size", "2", "--device", "cpu",
                  "--seed", "3"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    r = subprocess.run(args + ["--out", str(ref)], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr
    assert not (ref / ".train_state").exists()                      # removed once the results are written

    p = subprocess.Popen(args + ["--out", str(cut)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    state, t0, killed_at = cut / ".train_state" / "train_state.pt", time.time(), -1
    while p.poll() is None and time.time() - t0 < 300:
        killed_at = _epoch(state)
        if killed_at >= 2:
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (cut / "landmarks.csv").exists() and 2 <= _epoch(state) < epochs - 1

    r = subprocess.run(args + ["--out", str(cut)], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 2 and "already holds results" in r.stderr     # no silent overwrite of the interrupted run
    r = subprocess.run(args + ["--out", str(cut), "--resume"], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr
    a, b = json.loads((ref / "summary.json").read_text()), json.loads((cut / "summary.json").read_text())
    assert b["resumed_from_epoch"] >= 3 and a["resumed_from_epoch"] is None
    print(f"killed after epoch {killed_at} of {epochs}; resumed from epoch {b['resumed_from_epoch']}; "
          f"final train loss {a['history'][-1]['train_loss']!r} = {b['history'][-1]['train_loss']!r}")
    assert a["history"] == b["history"] and len(a["history"]) == epochs           # identical losses, every epoch
    assert (ref / "landmarks.csv").read_text() == (cut / "landmarks.csv").read_text()
    assert (ref / "importance.csv").read_text() == (cut / "importance.csv").read_text()
    assert not (cut / ".train_state").exists()

    r = subprocess.run(args + ["--out", str(cut), "--resume"], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 2 and "holds no training state" in r.stderr and "Traceback" not in r.stderr


class Crash(Exception):
    pass


def _crash_after(monkeypatch, stage, epoch):
    "Make training raise right after the state of `stage` at `epoch` is written (as a kill would, a moment later)."
    import shape_nb.train as train
    real = train._save_state

    def save_then_crash(path, *args):
        real(path, *args)
        finished, ep = args[-1], args[-2]
        if f"_{stage}." in str(path) and ep == epoch and not finished: raise Crash
    monkeypatch.setattr(train, "_save_state", save_then_crash)


def test_tl_deepssm_resumes_in_its_second_stage(tmp_path, monkeypatch):
    from shape_nb.deepssm import DeepSSM, ellipsoid_dataset
    from shape_nb.train import load_train_state
    data = ellipsoid_dataset(12, 16, 24, random_state=0)
    x, P = data["images"], data["points"]
    kw = dict(kind="tl", latent=4, ae_hidden=(16,), channels=(4, 4, 8, 8, 8), kernel_size=3, fc=(16, 8), pool_to=2,
              batch_size=4, epochs=3, patience=None, progress=False, device="cpu", random_state=1)
    ref = DeepSSM(**kw).fit(x, P)
    opts = dict(checkpoint=str(tmp_path / "state.pt"))
    with monkeypatch.context() as m:
        _crash_after(m, "tflank", 1)
        with pytest.raises(Crash):
            DeepSSM(**kw, train_options=opts).fit(x, P)
    assert load_train_state(tmp_path / "state_autoencoder.pt")["finished"]
    assert load_train_state(tmp_path / "state_tflank.pt")["epoch"] == 1 and not (tmp_path / "state_joint.pt").exists()
    est = DeepSSM(**kw, train_options=opts | dict(resume=True)).fit(x, P)
    assert est.history_["autoencoder"].resumed_from == 3 and est.history_["tflank"].resumed_from == 2
    assert est.history_["joint"].resumed_from is None
    for stage in ("autoencoder", "tflank", "joint"):
        assert est.history_[stage].column("train_loss") == ref.history_[stage].column("train_loss"), stage
    np.testing.assert_array_equal(est.predict(x), ref.predict(x))


def test_semisup_resumes_in_pretraining(tmp_path, monkeypatch):
    from shape_nb.phantoms import tps_phantoms
    from shape_nb.semisup import SemiSupervisedDetector
    imgs, cps = tps_phantoms(10, 32, seed=4)
    kw = dict(rounds=1, epochs_pretrain=3, epochs_round=1, epochs_finetune=1, channels=(4, 8), batch_size=2,
              device="cpu", progress=False, z_threshold=5.0)
    ref = SemiSupervisedDetector(**kw).fit(imgs[:6], cps[:6], unlabelled=imgs[6:])
    opts = dict(checkpoint=str(tmp_path / "semi.pt"))
    with monkeypatch.context() as m:
        _crash_after(m, "pretrain", 1)
        with pytest.raises(Crash):
            SemiSupervisedDetector(**kw, train_options=opts).fit(imgs[:6], cps[:6], unlabelled=imgs[6:])
    det = SemiSupervisedDetector(**kw, train_options=opts | dict(resume=True))
    det.fit(imgs[:6], cps[:6], unlabelled=imgs[6:])
    assert det.history_["pretrain"].resumed_from == 2
    assert det.history_["round_1"].column("train_loss") == ref.history_["round_1"].column("train_loss")
    np.testing.assert_array_equal(det.predict(imgs), ref.predict(imgs))
