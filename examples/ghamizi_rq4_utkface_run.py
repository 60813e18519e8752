"""Ghamizi et al. on UTKFace (reports/ghamizi_rq4_utkface.*): RQ4's task-selection proxies and their Pearson
correlation with the measured vulnerability (Table 3 shape), plus Def. 1 / Def. 3 / Thm. 4 (adversarial and
marginal vulnerability with its first-order bound) on the three-task model (Fig. 1 shape).

Usage (the report's run):
    OMP_NUM_THREADS=1 python examples/ghamizi_rq4_utkface_run.py --train 2000 --test 256 --epochs 6 --early 2 \\
        --work runs/rq4 --out reports --prefix ghamizi_rq4_utkface
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from itertools import permutations
from pathlib import Path

import torch

from mtlguard.atomic import atomic_write_text
from mtlguard.attacks.task_selection import task_selection_markdown, task_selection_study
from mtlguard.data import UTKFace
from mtlguard.metrics import adversarial_vulnerability, marginal_vulnerability
from mtlguard.models import build_model, load_model
from mtlguard.training import train

p = argparse.ArgumentParser()
p.add_argument("--root", default="/work/shared/data/utkface")
p.add_argument("--train", type=int, default=2000)
p.add_argument("--test", type=int, default=256)
p.add_argument("--size", type=int, default=32)
p.add_argument("--epochs", type=int, default=6)
p.add_argument("--early", type=int, default=2)
p.add_argument("--target-arch", default="resnet18")
p.add_argument("--surrogate-arch", default="small_cnn")
p.add_argument("--steps", type=int, default=25)
p.add_argument("--attack", default="single", choices=["single", "multi"])
p.add_argument("--batch-size", type=int, default=128)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--work", default="runs/rq4")
p.add_argument("--out", default="reports")
p.add_argument("--prefix", default="ghamizi_rq4_utkface")
a = p.parse_args()
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
command = "OMP_NUM_THREADS=1 python " + " ".join(shlex.quote(v) for v in sys.argv)
t0 = time.time()
train_set = UTKFace(a.root, split="train", image_size=a.size, subset=a.train, seed=a.seed, progress=False)
test_set = UTKFace(a.root, split="test", image_size=a.size, subset=a.test, seed=a.seed, progress=False)
tasks = train_set.tasks

study = task_selection_study(train_set, test_set, tasks, target_arch=a.target_arch, surrogate_arch=a.surrogate_arch,
                             epochs=a.epochs, early_epochs=a.early, steps=a.steps, step_size=2 / 255, eps=8 / 255,
                             attack=a.attack, batch_size=a.batch_size, seed=a.seed)
print("study done", round(time.time() - t0), "s", flush=True)

# Def. 1 / Def. 3 / Thm. 4 on the three-task target model: add the tasks one at a time, every order
out3 = Path(a.work) / "mtl3"
if (out3 / "metrics.json").is_file():
    m3 = load_model(out3)
else:
    torch.manual_seed(a.seed)
    m3 = build_model(tasks, arch=a.target_arch, image_size=a.size)
    train(m3, tasks, train_set, test_set, weighting="ls", epochs=a.epochs, batch_size=a.batch_size, out_dir=out3,
          seed=a.seed, resume=True, progress=False, eval_every=a.epochs)
m3.eval()
loader = list(torch.utils.data.DataLoader(test_set, batch_size=64, shuffle=False))
names = [t.name for t in tasks]
eps = 8 / 255
av = {}
for n in range(1, 4):
    for subset in {tuple(sorted(s)) for s in permutations(names, n)}:
        av["+".join(subset)] = adversarial_vulnerability(m3, tasks, loader, eps, attacked=list(subset))
marg = []
for order in permutations(names):
    for i in range(1, 3):
        r = marginal_vulnerability(m3, tasks, loader, list(order[:i]), order[i], eps)
        marg.append({"base": list(order[:i]), "new": order[i], "marginal": r["marginal"], "bound": r["bound"],
                     "av_base": r["av_base"], "av_new": r["av_new"], "grad_norms": r["grad_norms"]})
print("vulnerability done", round(time.time() - t0), "s", flush=True)


def f(v, d=4):
    return "nan" if v != v else f"{v:.{d}f}"


c = study["config"]
md = ["# Ghamizi et al. on UTKFace: RQ4 task-selection proxies, Def. 1 / Def. 3 / Thm. 4", "", "Command:", "",
      "```", command, "```", "",
      f"Scale: **{len(train_set)} training / {len(test_set)} test images** (UTKFace stratified subsets, seed {a.seed}), "
      f"**{a.size}x{a.size} px**; every model an HPS {a.target_arch} (target) or {a.surrogate_arch} (surrogate encoder) "
      f"trained with LS for {a.epochs} epochs (early-stopping proxy: the same run after {a.early} epochs), batch "
      f"{a.batch_size}; attack L-inf PGD {a.steps} steps, eps 8/255, step 2/255 ({'main task only' if a.attack == 'single' else 'all tasks'}); "
      f"device CPU, 1 thread, torch {torch.__version__}; wall time {(time.time() - t0) / 60:.0f} min.  The paper "
      "studies 11 Taskonomy tasks and 935 models; this is its protocol on UTKFace's 3 tasks (9 main+auxiliary "
      "combinations), so each correlation rests on n = 9 points.", "",
      "## RQ4: Pearson correlation between proxies and the target's vulnerability (Table 3 shape)", "",
      "Vulnerability = relative task vulnerability of the main task (relative increase of its mean CE under attack).", "",
      task_selection_markdown(study), "",
      "## Def. 1: adversarial vulnerability of the three-task target model (first order, eps 8/255)", "",
      "E_x[eps ||grad_x L_T'||_1] for every attacked task set T' (uniform weights 1/|T'|):", "",
      "| attacked tasks | adversarial vulnerability |", "|---|---|"]
md += [f"| {k} | {f(v, 5)} |" for k, v in sorted(av.items(), key=lambda kv: (kv[0].count("+"), kv[0]))]
md += ["", "## Def. 3 / Thm. 4: marginal vulnerability of adding a task, and its bound", "",
       "Delta = AV(T_N + t) - AV(T_N); bound = eps (E||r_t|| + max_i E||r_i||) (uniform weights).", "",
       "| base T_N | added t | AV(T_N) | AV(T_N + t) | marginal | bound | within bound |", "|---|---|---|---|---|---|---|"]
seen = set()
for r in marg:
    key = (tuple(sorted(r["base"])), r["new"])
    if key in seen:
        continue
    seen.add(key)
    md.append(f"| {'+'.join(sorted(r['base']))} | {r['new']} | {f(r['av_base'], 5)} | {f(r['av_new'], 5)} | "
              f"{f(r['marginal'], 5)} | {f(r['bound'], 5)} | {'yes' if r['marginal'] <= r['bound'] else 'NO'} |")
md += ["", "E||grad_x L_i||_1 per task: " + ", ".join(f"{k} {f(v, 3)}" for k, v in marg[1]["grad_norms"].items()
                                                          if k in names), ""]
out = Path(a.out)
atomic_write_text(out / f"{a.prefix}.json", json.dumps({"command": command, "config": vars(a), "study": study,
                                                         "adversarial_vulnerability": av, "marginal": marg}, indent=1))
atomic_write_text(out / f"{a.prefix}.md", "\n".join(md) + "\n")
print("wrote", out / f"{a.prefix}.md")
