"""AutoAttack-style numbers for HPS, MTAN and Cross-stitch victims on UTKFace (reports/attacks_auto_utkface.*).

Trains the three victims with ``mtlguard train --mtl ...`` and attacks each with ``mtlguard attack-eval``:
PGD, APGD and the ensemble ``auto`` (APGD + targeted APGD + Square, per-image worst case) under TOTAL and
GB-MTA, plus Auto-SAGE and GB-MTA-Auto-SAGE (Eq. 15-16).  Every command is recorded in the summary report.

Usage (the report's run):
    OMP_NUM_THREADS=1 python examples/attacks_auto_utkface_run.py --train 2000 --test 256 --epochs 8 \\
        --work runs/auto --out reports --prefix attacks_auto_utkface
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from mtlguard.atomic import atomic_write_text
from mtlguard.cli.main import main

p = argparse.ArgumentParser()
p.add_argument("--root", default="/work/shared/data/utkface")
p.add_argument("--train", type=int, default=2000)
p.add_argument("--test", type=int, default=256)
p.add_argument("--size", type=int, default=32)
p.add_argument("--epochs", type=int, default=8)
p.add_argument("--arch", default="resnet18")
p.add_argument("--mtl", default="hps,mtan,cross_stitch")
p.add_argument("--eps", default="4,8")
p.add_argument("--steps", type=int, default=10)
p.add_argument("--queries", type=int, default=200)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--work", default="runs/auto")
p.add_argument("--out", default="reports")
p.add_argument("--prefix", default="attacks_auto_utkface")
a = p.parse_args()
threads = os.environ.get("OMP_NUM_THREADS", "1")
t0 = time.time()
commands, summary = [], {}
for mtl in a.mtl.split(","):
    run = Path(a.work) / mtl
    tr = ["train", "--data", "utkface", "--root", a.root, "--image-size", str(a.size), "--subset", str(a.train),
          "--test-subset", str(a.test), "--arch", a.arch, "--mtl", mtl, "--epochs", str(a.epochs), "--batch-size",
          "128", "--eval-every", str(a.epochs), "--seed", str(a.seed), "--threads", threads, "--out", str(run),
          "--no-progress"]
    if not (run / "result.json").is_file():
        if (run / "checkpoint.pt").is_file():
            tr.append("--resume")
        main(tr)
    commands.append("mtlguard " + " ".join(shlex.quote(v) for v in tr))
    ae = ["attack-eval", "--model", str(run), "--data", "utkface", "--root", a.root, "--subset", str(a.test),
          "--attacks", "pgd,apgd,auto", "--aggregations", "total,gbmta,autosage,gbmta_autosage", "--eps", a.eps,
          "--steps", str(a.steps), "--queries", str(a.queries), "--batch-size", "64", "--seed", str(a.seed),
          "--out", a.out, "--prefix", f"{a.prefix}_{mtl}", "--no-progress"]
    if not (Path(a.out) / f"{a.prefix}_{mtl}.json").is_file():
        main(ae)
    commands.append("mtlguard " + " ".join(shlex.quote(v) for v in ae))
    summary[mtl] = {"train": json.loads((run / "result.json").read_text()),
                    "attacks": json.loads((Path(a.out) / f"{a.prefix}_{mtl}.json").read_text())}
    print(mtl, "done", round(time.time() - t0), "s", flush=True)


def f2(v):
    return "nan" if v is None or v != v else f"{v:.2f}"


names = ["age", "gender", "race"]
label = {("pgd", "total"): "PGD Total", ("pgd", "gbmta"): "PGD GB-MTA", ("apgd", "total"): "APGD Total",
         ("apgd", "gbmta"): "APGD GB-MTA", ("auto", "total"): "Auto Total", ("auto", "gbmta"): "Auto GB-MTA",
         ("autosage", "autosage"): "Auto-SAGE", ("autosage", "gbmta_autosage"): "GB-MTA-Auto-SAGE"}
eps_list = [float(e) for e in a.eps.split(",")]
md = ["# AutoAttack-style robustness of HPS, MTAN and Cross-stitch victims on UTKFace", "",
      "Commands (OMP_NUM_THREADS=1, in this order; driver: `" + "OMP_NUM_THREADS=1 python " +
      " ".join(shlex.quote(v) for v in sys.argv) + "`):", "", "```"] + commands + ["```", "",
      f"Scale: **{a.train} training / {a.test} test images** (UTKFace stratified subsets, seed {a.seed}), "
      f"**{a.size}x{a.size} px**, {a.arch} backbone, LS, {a.epochs} epochs; attacks {a.steps} iterations "
      f"(PGD step 2.5 eps / steps with a random start, APGD its schedule, Auto-SAGE step 2.5 eps / steps), Square "
      f"{a.queries} queries; device CPU ({threads} thread, shared 2-core machine), torch {torch.__version__}; wall "
      f"time {(time.time() - t0) / 60:.0f} min.  `Auto` = APGD + targeted APGD (top wrong classes) + Square, "
      "per image the candidate fooling the most tasks, then the highest objective of the aggregation.  Small scale: compare rows within this report.", "",
      "## Clean accuracy (%)", "", "| victim | " + " | ".join(names) + " |", "|---|---|---|---|"]
for mtl, s in summary.items():
    md.append(f"| {mtl} | " + " | ".join(f"{100 * s['train']['final'][n]['accuracy']:.1f}" for n in names) + " |")
for e in eps_list:
    md += ["", f"## ARP (%, GB-MTA Eq. 10; higher = stronger attack), eps {e:g}/255", "",
           "| victim | " + " | ".join(label.values()) + " |", "|" + "---|" * (len(label) + 1)]
    for mtl, s in summary.items():
        rows = {(r["attack"], r["aggregation"]): r for r in s["attacks"]["results"] if abs(r["eps_255"] - e) < 1e-6}
        md.append(f"| {mtl} | " + " | ".join(f2(rows[k]["arp"]) if k in rows else "-" for k in label) + " |")
    md += ["", f"Accuracy under attack (%), eps {e:g}/255 (age / gender / race):", "",
           "| victim | " + " | ".join(label.values()) + " |", "|" + "---|" * (len(label) + 1)]
    for mtl, s in summary.items():
        rows = {(r["attack"], r["aggregation"]): r for r in s["attacks"]["results"] if abs(r["eps_255"] - e) < 1e-6}
        md.append(f"| {mtl} | " + " | ".join(
            " / ".join(f"{100 * rows[k]['metrics'][n]['accuracy']:.1f}" for n in names) if k in rows else "-"
            for k in label) + " |")
md += ["", "Per-victim details (per-task ARP, relative task vulnerability, seconds per image, plots): "
       + ", ".join(f"`{a.prefix}_{m}.md`" for m in summary) + "."]
atomic_write_text(Path(a.out) / f"{a.prefix}.md", "\n".join(md) + "\n")
atomic_write_text(Path(a.out) / f"{a.prefix}.json", json.dumps({"commands": commands, "config": vars(a),
                                                                 "victims": {m: {"clean": s["train"]["final"]} for m, s in summary.items()}},
                                                                indent=1))
print("wrote", Path(a.out) / f"{a.prefix}.md")
