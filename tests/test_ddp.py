"""DistributedDataParallel under torchrun: 2 gloo processes on the CPU train like 1 process with accumulate=2.

The optimisation is the same (losses and every parameter agree to float rounding). BatchNorm running statistics
are not: one process keeps one moving average over all micro-batches, two ranks keep one each over half of them
(averaged at the end of every epoch), so eval-mode outputs differ somewhat; the test checks the statistics are
averaged over the ranks rather than taken from rank 0 alone.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = str(Path(__file__).with_name("ddp_discovery.py"))
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def test_two_gloo_ranks_match_one_process_with_accumulation(tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    r = subprocess.run([sys.executable, SCRIPT, str(one), "2"], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", SCRIPT,
                        str(two), "1"], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["world"], b["world"]) == (1, 2)
    # 56 ordered pairs in batches of 4 = 14 batches per epoch: 7 optimiser steps per epoch either way
    assert a["steps"] == b["steps"] == 14
    np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=1e-5)   # the epoch losses are reduced over ranks
    assert a["params"].keys() == b["params"].keys() and len(a["params"]) > 4
    for k in a["params"]:
        np.testing.assert_allclose(b["params"][k], a["params"][k], atol=2e-5, err_msg=k)
    moved = max(np.abs(np.array(a["params"][k])).max() for k in a["params"])
    assert moved > 0.05
    # BatchNorm: rank-averaged running statistics; every rank counted its own 7 batches per epoch
    means = [k for k in b["buffers"] if k.endswith("running_mean")]
    assert means and all(b["buffers"][k.replace("running_mean", "num_batches_tracked")] == 14 for k in means)
    assert all(np.abs(np.array(b["buffers"][k]) - np.array(a["buffers"][k])).max() < 0.5 for k in means)
    # the file pipeline under torchrun: every rank trains, rank 0 alone writes the results
    files = [".results.json", "discovery.pt", "importance.csv", "landmarks.csv", "report.html", "summary.json"]
    assert sorted(p.name for p in Path(f"{two}.d").iterdir()) == files
    assert [json.loads(Path(f"{two}.rank{r}").read_text())["summary"] for r in (0, 1)] == [True, False]
    assert json.loads(Path(f"{one}.rank0").read_text())["summary"]
