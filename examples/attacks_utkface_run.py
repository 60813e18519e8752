"""Train the two small UTKFace victims of reports/attacks_utkface.md (CPU, low resolution).

* ``std``: standard MTL ResNet-18 (age 9 bins / gender / race, LS weighting);
* ``fat``: the same model and data trained with FAT GB-MTA (GB-MTA Alg. 4) through the trainer's
  ``perturb`` hook (:class:`mtlguard.attacks.FATPerturb`).

Usage: python reports/attacks_utkface_run.py {std,fat} OUT_DIR [--train N] [--epochs E] [--size S] [--init DIR]
"""
from __future__ import annotations

import argparse
import json

import torch

from mtlguard.attacks import FATPerturb
from mtlguard.data import SyntheticScenes, UTKFace
from mtlguard.models import build_model, load_model
from mtlguard.training import train

p = argparse.ArgumentParser()
p.add_argument("kind", choices=["std", "fat"])
p.add_argument("out_dir")
p.add_argument("--root", default="/work/shared/data/utkface")
p.add_argument("--data", default="utkface", choices=["utkface", "synthetic"], help="synthetic = SyntheticScenes (3 dense tasks)")
p.add_argument("--train", type=int, default=3000)
p.add_argument("--test", type=int, default=256)
p.add_argument("--epochs", type=int, default=4)
p.add_argument("--size", type=int, default=32)
p.add_argument("--batch-size", type=int, default=128)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--fat-eps", type=float, default=4.0, help="FAT budget in /255")
p.add_argument("--fat-steps", type=int, default=3)
p.add_argument("--fat-tau", type=int, default=1)
p.add_argument("--init", default=None, help="start from this trained model directory (fine-tuning)")
p.add_argument("--lr", type=float, default=1e-3)
a = p.parse_args()
torch.set_num_threads(2)
if a.data == "utkface":
    train_set = UTKFace(a.root, split="train", image_size=a.size, subset=a.train, seed=a.seed, progress=False)
    test_set = UTKFace(a.root, split="test", image_size=a.size, subset=a.test, seed=a.seed, progress=False)
else:
    train_set = SyntheticScenes(a.train, image_size=(a.size, a.size), seed=a.seed, split="train", progress=False)
    test_set = SyntheticScenes(a.test, image_size=(a.size, a.size), seed=a.seed, split="test", progress=False)
torch.manual_seed(a.seed)
model = build_model(train_set.tasks, arch="resnet18", image_size=a.size) if a.init is None else load_model(a.init)
perturb = None
if a.kind == "fat":
    eps = a.fat_eps / 255
    perturb = FATPerturb(train_set.tasks, eps=eps, steps=a.fat_steps, step_size=2.5 * eps / a.fat_steps,
                         tau=a.fat_tau, aggregation="gbmta")
res = train(model, train_set.tasks, train_set, test_set, weighting="ls", epochs=a.epochs, lr=a.lr,
            batch_size=a.batch_size, out_dir=a.out_dir, seed=a.seed, device="cpu", perturb=perturb, resume=True,
            progress=False)
print(json.dumps(res["final"], indent=1))
