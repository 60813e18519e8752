"""MTA generator (per-instance, non-targeted) vs PGD-GB-MTA on a UTKFace MTL victim: fooling ratio per task
(share of test images whose prediction changes) and attack time per image, at the same linf eps.

Usage: python reports/attacks_utkface_mta.py MODEL_DIR OUT_JSON [--eps 8] [--train N] [--epochs E]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from mtlguard.attacks import PGD
from mtlguard.attacks.mta import MTAGenerator, evaluate_mta, train_mta
from mtlguard.data import UTKFace
from mtlguard.models import load_model

p = argparse.ArgumentParser()
p.add_argument("model_dir")
p.add_argument("out_json")
p.add_argument("--root", default="/work/shared/data/utkface")
p.add_argument("--train", type=int, default=3000)
p.add_argument("--test", type=int, default=256)
p.add_argument("--eps", type=float, default=8.0, help="linf budget in /255")
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--ngf", type=int, default=16)
p.add_argument("--blocks", type=int, default=2)
p.add_argument("--pgd-steps", type=int, default=10)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--gen-dir", default="runs/attacks/mta_generator", help="generator checkpoint / weights folder")
a = p.parse_args()
torch.set_num_threads(2)
torch.manual_seed(a.seed)
model = load_model(a.model_dir).eval()
size = int(model.config["image_size"])
tasks = model.tasks
train_set = UTKFace(a.root, split="train", image_size=size, subset=a.train, seed=a.seed, progress=False)
test_set = UTKFace(a.root, split="test", image_size=size, subset=a.test, seed=a.seed, progress=False)
train_loader = torch.utils.data.DataLoader(train_set, batch_size=32, shuffle=True,
                                           generator=torch.Generator().manual_seed(a.seed))
test_loader = torch.utils.data.DataLoader(test_set, batch_size=64, shuffle=False)
eps = a.eps / 255
gen = MTAGenerator(tasks, image_size=size, eps=eps, ngf=a.ngf, n_blocks=a.blocks, seed=a.seed)
out_dir = a.gen_dir
t0 = time.perf_counter()
logs = train_mta(gen, tasks, model, train_loader, epochs=a.epochs, lr=2e-4, out_dir=out_dir, seed=a.seed,
                 progress=False)
train_s = time.perf_counter() - t0
mta = evaluate_mta(gen, tasks, model, test_loader)

# PGD-GB-MTA: one adversarial image for all tasks
atk = PGD(model, tasks, eps=eps, steps=a.pgd_steps, step_size=2.5 * eps / a.pgd_steps, aggregation="gbmta")
changed = {t.name: 0 for t in tasks}
correct = {t.name: 0 for t in tasks}
n, pgd_s = 0, 0.0
for x, y in test_loader:
    t1 = time.perf_counter()
    xa = atk(x, y)
    pgd_s += time.perf_counter() - t1
    with torch.no_grad():
        oc, oa = model(x), model(xa)
    for t in tasks:
        pc, pa = oc[t.name].argmax(1), oa[t.name].argmax(1)
        changed[t.name] += int((pc != pa).sum())
        correct[t.name] += int((pa == y[t.name]).sum())
    n += x.shape[0]
res = {"eps_255": a.eps, "image_size": size, "train_images": len(train_set), "test_images": n, "seed": a.seed,
       "device": "cpu", "torch_threads": torch.get_num_threads(),
       "mta": {"per_task": mta["per_task"], "seconds_per_image": mta["seconds_per_image"], "train_seconds": train_s,
               "epochs": a.epochs, "ngf": a.ngf, "n_blocks": a.blocks, "train_log": logs},
       "pgd_gbmta": {"steps": a.pgd_steps, "seconds_per_image": pgd_s / n,
                     "per_task": {t.name: {"fooling_ratio": changed[t.name] / n, "acc_adv": correct[t.name] / n}
                                  for t in tasks}}}
with open(a.out_json + ".tmp", "w") as f:
    json.dump(res, f, indent=1)
os.replace(a.out_json + ".tmp", a.out_json)
print(json.dumps({k: v for k, v in res.items() if k != "mta"}, indent=1))
print(json.dumps(res["mta"]["per_task"], indent=1), res["mta"]["seconds_per_image"])
