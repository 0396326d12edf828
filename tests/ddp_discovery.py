"""Landmark discovery on 8 small phantoms; run alone or under torchrun by tests/test_ddp.py.

    python tests/ddp_discovery.py OUT.json ACCUMULATE
    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_discovery.py OUT.json 1

Also runs the file pipeline `train_from_folder` into OUT.json.d (rank 0 writes it) and records, per rank, whether
that rank got a summary (OUT.json.rankN).
"""
import json
import sys

import torch

from shape_nb.discovery import LandmarkDiscovery, train_from_folder
from shape_nb.phantoms import tps_phantoms
from shape_nb.train import dist_info

out, accumulate = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(1)
imgs, _ = tps_phantoms(8, 24, seed=0)
est = LandmarkDiscovery(n_landmarks=4, epochs=2, batch_size=4, noise_std=0.0, val_fraction=0, pairs="all",
                        grad_clip=None, channels=(8, 16), device="cpu", progress=False,
                        train_options=dict(accumulate=accumulate)).fit(imgs)
rank, world = dist_info()
if rank == 0:
    h = est.history_["train"]
    json.dump(dict(world=world, landmarks=est.landmarks_.tolist(), train_loss=h.column("train_loss"),
                   steps=len(h.grad_norms), params={k: v.tolist() for k, v in est.model_.named_parameters()},
                   buffers={k: v.tolist() for k, v in est.model_.named_buffers()}), open(out, "w"))
folder = train_from_folder(imgs, out + ".d", n_landmarks=4, epochs=1, batch_size=4, channels=(8, 16), device="cpu",
                           progress=False, max_report=2)
json.dump(dict(summary=folder.summary_ is not None), open(f"{out}.rank{rank}", "w"))
