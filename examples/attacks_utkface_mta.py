"""MTA generator (per-instance, non-targeted) vs PGD-GB-MTA on a UTKFace MTL victim: fooling ratio per task
(share of test images whose prediction changes, MTA Sec. 4.1) and attack time per image, at the same linf eps,
both measured in this one process (same threads, same test images, same batch size).

The generator trains on ``--train`` training-split images and is evaluated after every epoch on ``--val``
further training-split images that it never trains on (the learning curve; use it, not the test set, to
pick lr / epochs); the final numbers are on ``--test`` images of the test split.

Usage: python reports/attacks_utkface_mta.py MODEL_DIR OUT_JSON [--eps 8] [--train N] [--val V] [--epochs E]
       [--lr LR] [--output tanh|linear] [--gen-dir DIR] [--skip-pgd]
Run with OMP_NUM_THREADS=1 (the script also sets torch.set_num_threads(--threads)).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
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
p.add_argument("--train", type=int, default=3000, help="training images of the generator (train split)")
p.add_argument("--val", type=int, default=256, help="held-out train-split images for the per-epoch curve")
p.add_argument("--test", type=int, default=256, help="test-split images of the final comparison")
p.add_argument("--eps", type=float, default=8.0, help="linf budget in /255")
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--lr", type=float, default=2e-4, help="Adam lr (MTA Sec. 4: 2e-4)")
p.add_argument("--batch-size", type=int, default=32)
p.add_argument("--ngf", type=int, default=16)
p.add_argument("--blocks", type=int, default=2)
p.add_argument("--output", default="tanh", choices=["tanh", "linear"], help="generator head (MTAGenerator output=)")
p.add_argument("--pgd-steps", type=int, default=10)
p.add_argument("--skip-pgd", action="store_true", help="only train/evaluate the generator (calibration runs)")
p.add_argument("--threads", type=int, default=1)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--gen-dir", default="runs/attacks/mta_generator", help="generator checkpoint / weights folder (resumable)")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)
load_start = os.getloadavg()
model = load_model(a.model_dir).eval()
size = int(model.config["image_size"])
tasks = model.tasks
pool = UTKFace(a.root, split="train", image_size=size, subset=a.train + a.val, seed=a.seed, progress=False)
perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(a.seed)).tolist()
train_set = torch.utils.data.Subset(pool, perm[:a.train])
val_set = torch.utils.data.Subset(pool, perm[a.train:])
test_set = UTKFace(a.root, split="test", image_size=size, subset=a.test, seed=a.seed, progress=False)
train_loader = torch.utils.data.DataLoader(train_set, batch_size=a.batch_size, shuffle=True, drop_last=True,
                                           generator=torch.Generator().manual_seed(a.seed))
val_loader = torch.utils.data.DataLoader(val_set, batch_size=64, shuffle=False)
test_loader = torch.utils.data.DataLoader(test_set, batch_size=64, shuffle=False)
eps = a.eps / 255
gen = MTAGenerator(tasks, image_size=size, eps=eps, ngf=a.ngf, n_blocks=a.blocks, seed=a.seed, output=a.output)


def short(res: dict) -> dict:
    return {"fooling": {k: round(v.get("fooling_ratio", float("nan")), 4) for k, v in res["per_task"].items()},
            "budget_use": {k: round(v["budget_use"], 3) for k, v in res["per_task"].items()}}


def on_epoch_end(g, log):
    val = evaluate_mta(g, tasks, model, val_loader)
    s = short(val)
    print(f"epoch {log['epoch']}: loss {log['loss']:.4f} per-task {({k: round(v, 3) for k, v in log['per_task'].items()})} "
          f"val fooling {s['fooling']} budget {s['budget_use']} ({log['seconds']:.0f} s)", flush=True)
    return {"val": s}


t0 = time.perf_counter()
logs = train_mta(gen, tasks, model, train_loader, epochs=a.epochs, lr=a.lr, out_dir=a.gen_dir, seed=a.seed,
                 progress=False, on_epoch_end=on_epoch_end)
train_s = time.perf_counter() - t0
mta = evaluate_mta(gen, tasks, model, test_loader)
print("test:", short(mta), f"{mta['seconds_per_image']:.5f} s/image", flush=True)

pgd = None
if not a.skip_pgd:  # PGD-GB-MTA: one adversarial image for all tasks
    atk = PGD(model, tasks, eps=eps, steps=a.pgd_steps, step_size=2.5 * eps / a.pgd_steps, aggregation="gbmta",
              seed=a.seed)
    changed = {t.name: 0 for t in tasks}
    correct = {t.name: 0 for t in tasks}
    n, pgd_s, abs_d = 0, 0.0, 0.0
    for x, y in test_loader:
        t1 = time.perf_counter()
        xa = atk(x, y)
        pgd_s += time.perf_counter() - t1
        with torch.no_grad():
            oc, oa = model(x), model(xa)
        abs_d += float((xa - x).abs().flatten(1).mean(1).sum())
        for t in tasks:
            pc, pa = oc[t.name].argmax(1), oa[t.name].argmax(1)
            changed[t.name] += int((pc != pa).sum())
            correct[t.name] += int((pa == y[t.name]).sum())
        n += x.shape[0]
    pgd = {"steps": a.pgd_steps, "step_size_255": 2.5 * a.eps / a.pgd_steps, "random_start": True,
           "seconds_per_image": pgd_s / n, "budget_use": abs_d / n / eps,
           "per_task": {t.name: {"fooling_ratio": changed[t.name] / n, "acc_adv": correct[t.name] / n} for t in tasks}}
    print("pgd-gbmta:", json.dumps(pgd), flush=True)

res = {"command": "python " + " ".join(__import__("shlex").quote(x) for x in __import__("sys").argv),
       "eps_255": a.eps, "image_size": size, "train_images": len(train_set), "val_images": len(val_set),
       "test_images": len(test_set), "seed": a.seed, "device": "cpu", "cpu": platform.processor() or platform.machine(),
       "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "eval_batch_size": 64,
       "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
       "mta": {"per_task": mta["per_task"], "seconds_per_image": mta["seconds_per_image"], "train_seconds": train_s,
               "epochs": a.epochs, "lr": a.lr, "batch_size": a.batch_size, "ngf": a.ngf, "n_blocks": a.blocks,
               "output": a.output, "config": gen.config(), "train_log": logs},
       "pgd_gbmta": pgd}
os.makedirs(os.path.dirname(os.path.abspath(a.out_json)), exist_ok=True)
with open(a.out_json + ".tmp", "w") as f:
    json.dump(res, f, indent=1)
os.replace(a.out_json + ".tmp", a.out_json)
