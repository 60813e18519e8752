"""GB-MTA RQ3.1 on UTKFace (reports/attacks_sharing_utkface.*): does task sharing raise attack transferability?

Victims: branched models ``branched:age@k,gender@k,race@k`` -- all three tasks split after block ``k`` of a
ResNet-18 -- for k = 0 (independent columns, "IND/0L"), 1, 2, 3 and 4 (all shared: HPS, "AS"), plus STL: three
single-task models trained separately and attacked as one system.  Each is attacked with APGD SINGLE-X
(every task), TOTAL and GB-MTA; the report gives ARP, the SINGLE-X transferability (Eq. 11), the per-pair
matrices ARP-Y / ARP-X as heatmaps (one panel per branch point) and transferability vs branch point
(GB-MTA Fig. 4 / Table 12 shape).

Usage (the report's run):
    OMP_NUM_THREADS=1 python examples/attacks_sharing_utkface_run.py --train 2000 --test 256 --epochs 8 \\
        --work runs/sharing --out reports --prefix attacks_sharing_utkface
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from torch import nn

from mtlguard.atomic import atomic_write, atomic_write_text
from mtlguard.attacks.evaluation import plot_transferability, run_attack_eval
from mtlguard.data import UTKFace
from mtlguard.models import build_model, load_model
from mtlguard.training import train

p = argparse.ArgumentParser()
p.add_argument("--root", default="/work/shared/data/utkface")
p.add_argument("--train", type=int, default=2000)
p.add_argument("--test", type=int, default=256)
p.add_argument("--size", type=int, default=32)
p.add_argument("--epochs", type=int, default=8)
p.add_argument("--batch-size", type=int, default=128)
p.add_argument("--arch", default="resnet18")
p.add_argument("--attack", default="apgd")
p.add_argument("--eps", default="8", help="comma list in /255")
p.add_argument("--steps", type=int, default=10)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--work", default="runs/sharing")
p.add_argument("--out", default="reports")
p.add_argument("--prefix", default="attacks_sharing_utkface")
a = p.parse_args()
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
command = "OMP_NUM_THREADS=1 python " + " ".join(shlex.quote(v) for v in sys.argv)
t_start = time.time()

train_set = UTKFace(a.root, split="train", image_size=a.size, subset=a.train, seed=a.seed, progress=False)
test_set = UTKFace(a.root, split="test", image_size=a.size, subset=a.test, seed=a.seed, progress=False)
tasks = train_set.tasks
names = [t.name for t in tasks]
work = Path(a.work)
eps_list = [float(e) / 255 for e in a.eps.split(",")]


def trained(key: str, ts, mtl: str) -> nn.Module:
    out = work / key
    if (out / "metrics.json").is_file() and json.loads((out / "metrics.json").read_text()).get("final"):
        return load_model(out)
    torch.manual_seed(a.seed)
    model = build_model(ts, arch=a.arch, image_size=a.size, mtl=mtl)
    train(model, ts, train_set, test_set, weighting="ls", epochs=a.epochs, batch_size=a.batch_size, out_dir=out,
          seed=a.seed, resume=True, progress=False, eval_every=a.epochs)
    return model.eval()


class STLSystem(nn.Module):
    """Separately trained single-task models answering together: ``{task: model_task(x)[task]}``."""

    def __init__(self, models):
        super().__init__()
        self.models = nn.ModuleDict(models)

    def forward(self, x):
        return {n: m(x)[n] for n, m in self.models.items()}


victims = {}
for k in range(5):
    victims[f"k={k}"] = (trained(f"branched_k{k}", tasks, f"branched:age@{k},gender@{k},race@{k}"),
                         f"branched:age@{k},gender@{k},race@{k}" + (" (IND)" if k == 0 else " (HPS)" if k == 4 else ""))
victims["STL"] = (STLSystem({t.name: trained(f"stl_{t.name}", (t,), "hps") for t in tasks}),
                  "three separately trained single-task ResNet-18s")

loader = torch.utils.data.DataLoader(test_set, batch_size=64, shuffle=False)
results = {}
for key, (model, desc) in victims.items():
    t0 = time.time()
    res = run_attack_eval(model.eval(), tasks, loader, attacks=(a.attack,), aggregations=("single:*", "total", "gbmta"),
                          eps_list=eps_list, steps=a.steps, seed=a.seed, progress=False)
    res.pop("_examples", None)
    res["victim"] = desc
    res["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    res["attack_seconds"] = round(time.time() - t0, 1)
    results[key] = res
    print(key, "done", res["attack_seconds"], "s", flush=True)

out = Path(a.out)
out.mkdir(parents=True, exist_ok=True)
keys = list(results)
e_max = max(eps_list)
# heatmaps: one panel per victim at the largest eps
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

fig, axes = plt.subplots(1, len(keys), figsize=(3.1 * len(keys), 3.2), squeeze=False)
for ax, key in zip(axes[0], keys):
    mat = next(m["matrix"] for m in results[key]["transferability_matrix"] if m["eps"] == e_max)
    arr = np.array([[mat[x][y] for y in names] for x in names], dtype=float)
    ax.imshow(arr, cmap="viridis", vmin=0, vmax=1)
    for i in range(3):
        for j in range(3):
            ax.text(j, i, f"{arr[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="w" if arr[i, j] < 0.6 else "k")
    ax.set_xticks(range(3), names, fontsize=7)
    ax.set_yticks(range(3), [f"S-{n}" for n in names], fontsize=7)
    ax.set_title(key, fontsize=8)
fig.suptitle(f"{a.attack.upper()} SINGLE-X transferability ARP-Y / ARP-X, eps {e_max * 255:g}/255 "
             "(row = attacked task; k = last shared block)", fontsize=8)
fig.tight_layout()
atomic_write(out / f"{a.prefix}_heatmaps.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
plt.close(fig)
for key in keys:  # one heatmap file per branch point as well
    mat = next(m["matrix"] for m in results[key]["transferability_matrix"] if m["eps"] == e_max)
    plot_transferability(mat, names, out / f"{a.prefix}_{key.replace('=', '')}.png", f"{key}: ARP-Y / ARP-X")
fig, ax = plt.subplots(figsize=(4.8, 3.4))
for x in names:
    ys = [next(r["transferability"] for r in results[k]["results"]
               if r["aggregation"] == f"single:{x}" and r["eps"] == e_max) for k in keys]
    ax.plot(range(len(keys)), ys, marker="o", label=f"Single-{x}")
ax.set_xticks(range(len(keys)), keys, fontsize=8)
ax.set_xlabel("shared blocks k (STL = separate models)")
ax.set_ylabel("transferability (Eq. 11)")
ax.grid(alpha=0.3)
ax.legend(fontsize=7)
fig.tight_layout()
atomic_write(out / f"{a.prefix}_transfer.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
plt.close(fig)


def f2(v):
    return "nan" if v is None or (isinstance(v, float) and v != v) else f"{v:.2f}"


md = [f"# Task sharing vs attack transferability on UTKFace (GB-MTA RQ3.1, Fig. 4 / Table 12 shape)", "",
      "Command:", "", "```", command, "```", "",
      f"Scale: **{len(train_set)} training / {len(test_set)} test images** (UTKFace, stratified subset, seed "
      f"{a.seed}), **{a.size}x{a.size} px**, {a.arch} backbone, LS, {a.epochs} epochs, batch {a.batch_size}; "
      f"attack {a.attack.upper()} {a.steps} iterations, eps {', '.join(f'{e * 255:g}' for e in eps_list)}/255; "
      f"device CPU (1 thread, shared 2-core machine, {platform.processor() or platform.machine()}), torch "
      f"{torch.__version__}; wall time {(time.time() - t_start) / 60:.0f} min.  Small scale: the numbers show the "
      "shape of the effect on this dataset, not the paper's values (NYUv2 / Taskonomy, dense tasks).", "",
      "Victims: `branched:age@k,gender@k,race@k` shares the first k of the backbone's four blocks "
      "(k = 0: independent columns trained jointly; k = 4: HPS); STL = three separately trained models.", "",
      "## Clean accuracy and attack success (ARP, %)", ""]
head = ["victim", "params (M)"] + [f"clean {n}" for n in names] + \
    [f"ARP {lbl} eps{e * 255:g}" for e in eps_list for lbl in ["Single-" + n for n in names] + ["Total", "GB-MTA"]]
md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
for key in keys:
    r = results[key]
    cells = [key, f"{r['params_m']:.1f}"] + [f"{100 * r['clean'][n]['accuracy']:.1f}" for n in names]
    for e in eps_list:
        for agg in [f"single:{n}" for n in names] + ["total", "gbmta"]:
            cells.append(f2(next(x["arp"] for x in r["results"] if x["aggregation"] == agg and x["eps"] == e)))
    md.append("| " + " | ".join(cells) + " |")
md += ["", "## SINGLE-X transferability (Eq. 11: mean of ARP-Y / ARP-X over the other tasks)", ""]
head = ["victim"] + [f"Single-{n} eps{e * 255:g}" for e in eps_list for n in names]
md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
for key in keys:
    r = results[key]
    md.append("| " + " | ".join([key] + [f2(next(x["transferability"] for x in r["results"]
                                                   if x["aggregation"] == f"single:{n}" and x["eps"] == e))
                                        for e in eps_list for n in names]) + " |")
md += ["", f"## Transferability matrices ARP-Y / ARP-X (row = attacked task X), eps {e_max * 255:g}/255", "",
       f"Heatmaps: `{a.prefix}_heatmaps.png` (all victims), `{a.prefix}_k0.png` ... `{a.prefix}_STL.png`; "
       f"transferability vs k: `{a.prefix}_transfer.png`.", ""]
for key in keys:
    mat = next(m["matrix"] for m in results[key]["transferability_matrix"] if m["eps"] == e_max)
    md += [f"**{key}** ({results[key]['victim']})", "", "| X \\ Y | " + " | ".join(names) + " |",
           "|" + "---|" * (len(names) + 1)]
    md += ["| " + " | ".join([x] + [f2(mat[x][y]) for y in names]) + " |" for x in names]
    md.append("")
atomic_write_text(out / f"{a.prefix}.json", json.dumps({"command": command, "config": vars(a), "results": results},
                                                       indent=1))
atomic_write_text(out / f"{a.prefix}.md", "\n".join(md) + "\n")
print("wrote", out / f"{a.prefix}.md")
