"""Attack evaluation: each attack x aggregation over an eps sweep -> per-task metrics, ARP (GB-MTA Eq. 10),
relative task vulnerability (Ghamizi et al.), SINGLE-X transferability (GB-MTA Eq. 11); Markdown tables
shaped like GB-MTA Tables 1/3/12, an ARP-vs-eps plot (its Fig. 2) and a PNG of adversarial examples.

The data are read once: every batch is attacked by every configuration (meters stream per config).
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import torch

from ..atomic import atomic_write, atomic_write_text
from ..data.tasks import TaskSpec, validate_tasks
from ..metrics import MultiTaskMeter, arp, attack_transferability, relative_task_vulnerability
from ..models.losses import task_loss
from . import build_attack

DEFAULT_AGGREGATIONS = ("single:*", "total", "signtotal", "gbmta")


def expand_aggregations(aggregations: Sequence[str], tasks: Sequence[TaskSpec]) -> list[str]:
    """``single:*`` -> ``single:<task>`` for every task; others unchanged (order kept, no duplicates)."""
    out: list[str] = []
    for a in aggregations:
        items = [f"single:{t.name}" for t in tasks] if a.strip() in ("single:*", "single") else [a.strip()]
        out += [i for i in items if i not in out]
    return out


def _per_sample_losses(model, tasks, x, y) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(x)
        return {t.name: task_loss(t, out[t.name], y[t.name], "none").float().cpu() for t in tasks}, out


def run_attack_eval(model: torch.nn.Module, tasks: Sequence[TaskSpec], loader: Iterable, attacks: Sequence[str] = ("pgd",),
                    aggregations: Sequence[str] = DEFAULT_AGGREGATIONS, eps_list: Sequence[float] = (2 / 255, 4 / 255, 8 / 255),
                    steps: int = 10, norm: str = "linf", device: str | torch.device = "cpu", seed: int = 0,
                    progress: bool = True, max_batches: int | None = None, keep_examples: int = 4) -> dict:
    """Evaluate every (attack, aggregation, eps) on ``loader``; returns a JSON-able result dict.

    ``attacks``: names from :data:`mtlguard.attacks.ATTACKS` (FGSM ignores ``steps``; PGD uses
    ``step_size = 2.5 eps / steps`` and a random start; APGD its own schedule).  ARP compares every task's
    metrics (its ``spec.metrics`` with a known direction) after vs. before the attack.  The relative task
    vulnerability uses per-sample task losses as the error ``f_i``.
    """
    from tqdm.auto import tqdm

    tasks = validate_tasks(tasks)
    device = torch.device(device)
    model = model.to(device).eval()
    aggs = expand_aggregations(aggregations, tasks)
    configs = [(a, g, float(e)) for a in attacks for g in aggs for e in eps_list]
    clean_meter = MultiTaskMeter(tasks)
    meters = {c: MultiTaskMeter(tasks) for c in configs}
    clean_losses: dict[str, list] = {t.name: [] for t in tasks}
    adv_losses = {c: {t.name: [] for t in tasks} for c in configs}
    seconds = {c: 0.0 for c in configs}
    examples: dict = {}
    torch.manual_seed(seed)
    n_seen = 0
    batches = list(loader) if max_batches is None else [b for _, b in zip(range(max_batches), loader)]
    bar = tqdm(total=len(batches) * len(configs), desc="attack-eval", disable=not progress)
    for bi, (x, y) in enumerate(batches):
        x = x.to(device)
        y = {k: v.to(device) for k, v in y.items()}
        ls, out = _per_sample_losses(model, tasks, x, y)
        clean_meter.update({k: v.float() for k, v in out.items()}, y)
        for k, v in ls.items():
            clean_losses[k].append(v)
        if bi == 0:
            examples["clean"] = x[:keep_examples].cpu()
        for c in configs:
            name, agg, eps = c
            kw = {"steps": steps} if name.lower() != "fgsm" else {}
            if name.lower() == "pgd":
                kw["step_size"] = 2.5 * eps / steps
            atk = build_attack(name, model, tasks, eps=eps, norm=norm, aggregation=agg, **kw)
            t0 = time.perf_counter()
            x_adv = atk(x, y)
            seconds[c] += time.perf_counter() - t0
            la, oa = _per_sample_losses(model, tasks, x_adv, y)
            meters[c].update({k: v.float() for k, v in oa.items()}, y)
            for k, v in la.items():
                adv_losses[c][k].append(v)
            if bi == 0:
                examples[c] = x_adv[:keep_examples].cpu()
            bar.update(1)
        n_seen += x.shape[0]
    bar.close()
    clean = clean_meter.compute(with_average=False)
    cl = {k: torch.cat(v) for k, v in clean_losses.items()}
    arp_metrics, skipped = _usable_metrics(clean, tasks)
    rows = []
    for c in configs:
        name, agg, eps = c
        adv = meters[c].compute(with_average=False)
        a = arp(clean, adv, [t.name for t in tasks], metrics=arp_metrics)
        row = {"attack": name, "aggregation": agg, "eps": eps, "eps_255": round(eps * 255, 4), "arp": a["arp"],
               "task_arp": {t.name: a[t.name] for t in tasks}, "metrics": adv,
               "vulnerability": {t.name: relative_task_vulnerability(cl[t.name], torch.cat(adv_losses[c][t.name]))
                                 for t in tasks},
               "seconds_per_image": seconds[c] / max(n_seen, 1)}
        if agg.startswith("single:") and len(tasks) > 1:
            row["transferability"] = attack_transferability(row["task_arp"], agg[7:])
        rows.append(row)
    return {"tasks": [t.to_dict() for t in tasks], "images": n_seen, "attacks": list(attacks), "aggregations": aggs,
            "eps": [float(e) for e in eps_list], "steps": steps, "norm": norm, "seed": seed, "device": str(device),
            "clean": clean, "arp_metrics": arp_metrics, "arp_metrics_skipped": skipped, "results": rows,
            "_examples": examples}


def _usable_metrics(clean: dict, tasks) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per task, the metrics ARP can use: known direction, finite and non-zero before the attack
    (Eq. 10 divides by the clean value).  Returns ``(used, skipped)``."""
    from ..data.tasks import HIGHER_IS_BETTER

    used, skipped = {}, {}
    for t in tasks:
        ok, bad = [], []
        for m in t.metrics:
            v = clean.get(t.name, {}).get(m)
            (ok if m in HIGHER_IS_BETTER and isinstance(v, (int, float)) and math.isfinite(v) and v != 0 else bad).append(m)
        if not ok:
            raise ValueError(f"task {t.name!r}: no metric usable for ARP (clean values {clean.get(t.name)})")
        used[t.name], skipped[t.name] = ok, bad
    return used, skipped


# ------------------------------------------------------------------------------------- reports
def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def _label(agg: str) -> str:
    return {"total": "Total", "signtotal": "SignTotal", "gbmta": "GB-MTA", "wgd": "WGD",
            "wgd_initial": "WGD-init", "weighted": "Weighted"}.get(agg, agg.replace("single:", "Single-"))


def markdown_tables(res: dict) -> str:
    """GB-MTA Table 1-style ARP table (rows: eps; columns: attack x aggregation, best in bold), per-task
    ARP, relative task vulnerability, and SINGLE-X transferability (Table 12 style)."""
    rows, aggs = res["results"], res["aggregations"]
    lines = ["## ARP (GB-MTA Eq. 10, %, higher = stronger attack)", ""]
    head = ["eps (/255)"] + [f"{a.upper()} {_label(g)}" for a in res["attacks"] for g in aggs]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in res["eps"]:
        cells = [f"{e * 255:g}"]
        for a in res["attacks"]:
            vals = {r["aggregation"]: r["arp"] for r in rows if r["attack"] == a and r["eps"] == e}
            best = max(vals.values())
            cells += [f"**{_fmt(vals[g])}**" if vals[g] == best else _fmt(vals[g]) for g in aggs]
        lines.append("| " + " | ".join(cells) + " |")
    names = [t["name"] for t in res["tasks"]]
    lines += ["", "## Per-task ARP (ARP-X) and relative task vulnerability v_i (Ghamizi et al.; task loss as error)", ""]
    head = ["attack", "aggregation", "eps (/255)"] + [f"ARP-{n}" for n in names] + [f"v_{n}" for n in names] + ["s/image"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["attack"], _label(r["aggregation"]), f"{r['eps_255']:g}"]
                                        + [_fmt(r["task_arp"][n]) for n in names]
                                        + [_fmt(r["vulnerability"][n]) for n in names]
                                        + [f"{r['seconds_per_image']:.4f}"]) + " |")
    singles = [r for r in rows if "transferability" in r]
    if singles:
        lines += ["", "## SINGLE-X attack transferability (GB-MTA Eq. 11)", ""]
        head = ["attack", "eps (/255)"] + [f"Single-{n}" for n in names]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for a in res["attacks"]:
            for e in res["eps"]:
                tr = {r["aggregation"][7:]: r["transferability"] for r in singles if r["attack"] == a and r["eps"] == e}
                lines.append("| " + " | ".join([a, f"{e * 255:g}"] + [_fmt(tr.get(n)) for n in names]) + " |")
    lines += ["", "## Clean metrics", "", "```json", json.dumps(res["clean"], indent=1), "```", ""]
    if any(res.get("arp_metrics_skipped", {}).values()):
        lines += [f"ARP skipped metrics that are 0 / undefined before the attack: {res['arp_metrics_skipped']}", ""]
    return "\n".join(lines)


def plot_arp_vs_eps(res: dict, path: str | os.PathLike) -> None:
    """ARP vs eps per aggregation, one panel per base attack (GB-MTA Fig. 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = res["attacks"]
    fig, axes = plt.subplots(1, len(attacks), figsize=(4.5 * len(attacks), 3.6), squeeze=False)
    for ax, a in zip(axes[0], attacks):
        for g in res["aggregations"]:
            pts = sorted((r["eps_255"], r["arp"]) for r in res["results"] if r["attack"] == a and r["aggregation"] == g)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=_label(g),
                    linewidth=2.2 if g == "gbmta" else 1.2)
        ax.set_title(a.upper())
        ax.set_xlabel("eps (/255)")
        ax.set_ylabel("ARP (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    _atomic_fig(fig, path)
    plt.close(fig)


def plot_examples(res: dict, path: str | os.PathLike, n: int = 3) -> None:
    """Clean images and their adversarial versions (largest eps, first attack), one column per aggregation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ex = res["_examples"]
    a, e = res["attacks"][0], max(res["eps"])
    cols = [("clean", ex["clean"])] + [(_label(g), ex[(a, g, e)]) for g in res["aggregations"] if (a, g, e) in ex]
    n = min(n, ex["clean"].shape[0])
    fig, axes = plt.subplots(n, len(cols), figsize=(1.8 * len(cols), 1.9 * n), squeeze=False)
    for i in range(n):
        for j, (title, imgs) in enumerate(cols):
            img = imgs[i]
            img = img.repeat(3, 1, 1) if img.shape[0] == 1 else img[:3]
            axes[i][j].imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
            axes[i][j].axis("off")
            if i == 0:
                axes[i][j].set_title(title, fontsize=7)
    fig.suptitle(f"{a.upper()} eps={e * 255:g}/255", fontsize=8)
    fig.tight_layout()
    _atomic_fig(fig, path)
    plt.close(fig)


def _atomic_fig(fig, path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def write_reports(res: dict, out_dir: str | os.PathLike, prefix: str = "attack_eval", command: str | None = None) -> dict:
    """Write ``{prefix}.json``, ``{prefix}.md``, ``{prefix}_arp.png``, ``{prefix}_examples.png`` atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    public = {k: v for k, v in res.items() if not k.startswith("_")}
    if command:
        public["command"] = command
    paths = {"json": out / f"{prefix}.json", "md": out / f"{prefix}.md", "arp_png": out / f"{prefix}_arp.png",
             "examples_png": out / f"{prefix}_examples.png"}
    atomic_write_text(paths["json"], json.dumps(public, indent=1))
    header = [f"# Attack evaluation ({prefix})", ""]
    if command:
        header += ["Command:", "", "```", command, "```", ""]
    header += [f"images: {res['images']}, norm: {res['norm']}, steps: {res['steps']}, seed: {res['seed']}, "
               f"device: {res['device']}", ""]
    atomic_write_text(paths["md"], "\n".join(header) + markdown_tables(res))
    plot_arp_vs_eps(res, paths["arp_png"])
    if res.get("_examples"):
        plot_examples(res, paths["examples_png"])
    return {k: str(v) for k, v in paths.items()}


