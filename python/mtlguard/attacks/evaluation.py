"""Attack evaluation: each attack x aggregation over an eps sweep -> per-task metrics, ARP (GB-MTA Eq. 10),
relative task vulnerability (Ghamizi et al.), SINGLE-X transferability (GB-MTA Eq. 11) and its per-pair
matrix; Markdown tables shaped like GB-MTA Tables 1/3/12, an ARP-vs-eps plot (its Fig. 2), a PNG of
adversarial examples and transferability heatmaps (its Fig. 4).

The data are read once: every batch is attacked by every configuration (meters stream per config).

Attack names are those of :data:`mtlguard.attacks.ATTACKS`: ``fgsm``, ``pgd``, ``mim``, ``apgd``, the
black-box ``square``, ``autosage`` (with aggregation ``total`` = Auto-SAGE, Eq. 15; ``gbmta`` =
GB-MTA-Auto-SAGE, Eq. 16; ``single:X``; other aggregations are skipped for it) and ``auto`` (the
AutoAttack-style ensemble).  The aggregation names ``autosage`` / ``gbmta_autosage`` add the two Auto-SAGE
configurations whatever the attack list.
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
from ..metrics import MultiTaskMeter, arp, attack_transferability, relative_task_vulnerability, transferability_matrix
from ..models.losses import task_loss
from . import build_attack
from .autosage import AUTOSAGE_ALIASES

DEFAULT_AGGREGATIONS = ("single:*", "total", "signtotal", "gbmta")


def attack_configs(attacks: Sequence[str], aggregations: Sequence[str], eps_list: Sequence[float]) -> list[tuple]:
    """``(attack, aggregation, eps)`` for every pair that exists: ``autosage`` only composes with ``total``,
    ``gbmta`` and ``single:X``; the aggregation names ``autosage`` / ``gbmta_autosage`` stand for the
    ``autosage`` attack (added once, whatever the attack list)."""
    out = []
    for a in attacks:
        for g in aggregations:
            if g in AUTOSAGE_ALIASES:
                continue
            if a.lower() == "autosage" and not (g in ("total", "gbmta") or g.startswith("single:")):
                continue
            out += [(a, g, float(e)) for e in eps_list]
    for g in aggregations:
        if g in AUTOSAGE_ALIASES:
            out += [("autosage", g, float(e)) for e in eps_list]
    return out


def _attack_kwargs(name: str, eps: float, steps: int, queries: int) -> dict:
    name = name.lower()
    if name == "fgsm":
        return {}
    if name == "square":
        return {"n_queries": queries}
    if name == "auto":
        return {"steps": steps, "n_queries": queries}
    kw = {"steps": steps}
    if name in ("pgd", "autosage"):
        kw["step_size"] = 2.5 * eps / steps
    return kw


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
                    progress: bool = True, max_batches: int | None = None, keep_examples: int = 4,
                    queries: int = 100) -> dict:
    """Evaluate every (attack, aggregation, eps) on ``loader``; returns a JSON-able result dict.

    ``attacks``: names from :data:`mtlguard.attacks.ATTACKS` (FGSM ignores ``steps``; PGD and Auto-SAGE use
    ``step_size = 2.5 eps / steps``, PGD a random start; APGD its own schedule; ``square`` makes ``queries``
    queries; ``auto`` = APGD + APGD-T (``steps``) + Square (``queries``)).  ARP compares every task's
    metrics (its ``spec.metrics`` with a known direction) after vs. before the attack.  The relative task
    vulnerability uses the task loss as the error ``f_i``, as the relative increase of its mean (see
    :func:`mtlguard.metrics.relative_task_vulnerability`).  With SINGLE-X rows for every task, the result's
    ``transferability_matrix`` holds GB-MTA Eq. 11's per-pair ratios ``ARP-Y / ARP-X`` per (attack, eps).
    """
    from tqdm.auto import tqdm

    tasks = validate_tasks(tasks)
    device = torch.device(device)
    model = model.to(device).eval()
    aggs = expand_aggregations(aggregations, tasks)
    configs = attack_configs(attacks, aggs, eps_list)
    if not configs:
        raise ValueError(f"no attack x aggregation pair to run (attacks {list(attacks)}, aggregations {aggs})")
    attacks = list(dict.fromkeys(a for a, _, _ in configs))
    tally = _Tally(model, tasks, configs, keep_examples)
    torch.manual_seed(seed)
    batches = list(loader) if max_batches is None else [b for _, b in zip(range(max_batches), loader)]
    bar = tqdm(total=len(batches) * len(configs), desc="attack-eval", disable=not progress)
    for bi, (x, y) in enumerate(batches):
        x = x.to(device)
        y = {k: v.to(device) for k, v in y.items()}
        tally.add(None, x, y, first=bi == 0)
        for c in configs:
            name, agg, eps = c
            atk = build_attack(name, model, tasks, eps=eps, norm=norm, aggregation=agg,
                               **_attack_kwargs(name, eps, steps, queries))
            t0 = time.perf_counter()
            x_adv = atk(x, y)
            tally.seconds[c] += time.perf_counter() - t0
            tally.add(c, x_adv, y, first=bi == 0)
            bar.update(1)
        tally.images += x.shape[0]
    bar.close()
    clean = tally.clean_meter.compute(with_average=False)
    arp_metrics, skipped = _usable_metrics(clean, tasks)
    rows = tally.rows(clean, arp_metrics)
    return {"tasks": [t.to_dict() for t in tasks], "images": tally.images, "attacks": list(attacks),
            "aggregations": aggs, "eps": [float(e) for e in eps_list], "steps": steps, "queries": queries,
            "norm": norm, "seed": seed, "device": str(device), "clean": clean, "arp_metrics": arp_metrics,
            "arp_metrics_skipped": skipped, "results": rows,
            "transferability_matrix": _transferability_matrices(rows, attacks, eps_list, tasks),
            "_examples": tally.examples}


class _Tally:
    """What :func:`run_attack_eval` accumulates over the batches: task meters and per-sample losses of the clean
    images and of each (attack, aggregation, eps) config, attack time, and the first batch's examples."""

    def __init__(self, model, tasks, configs, keep_examples: int):
        self.model, self.tasks, self.configs, self.keep = model, tasks, configs, keep_examples
        self.meters = {c: MultiTaskMeter(tasks) for c in (None, *configs)}
        self.losses = {c: {t.name: [] for t in tasks} for c in (None, *configs)}
        self.seconds = {c: 0.0 for c in configs}
        self.examples: dict = {}
        self.images = 0
        self.clean_meter = self.meters[None]

    def add(self, config, x: torch.Tensor, y: dict, first: bool) -> None:
        """Score batch ``x`` (clean when ``config`` is None, else that config's adversarial batch)."""
        losses, out = _per_sample_losses(self.model, self.tasks, x, y)
        self.meters[config].update({k: v.float() for k, v in out.items()}, y)
        for k, v in losses.items():
            self.losses[config][k].append(v)
        if first:
            self.examples["clean" if config is None else config] = x[:self.keep].cpu()

    def rows(self, clean: dict, arp_metrics: dict) -> list[dict]:
        """One result row per config: its metrics, ARP vs. ``clean``, task vulnerability, time per image."""
        clean_loss = {k: torch.cat(v) for k, v in self.losses[None].items()}
        rows = []
        for c in self.configs:
            name, agg, eps = c
            adv = self.meters[c].compute(with_average=False)
            a = arp(clean, adv, [t.name for t in self.tasks], metrics=arp_metrics)
            row = {"attack": name, "aggregation": agg, "eps": eps, "eps_255": round(eps * 255, 4), "arp": a["arp"],
                   "task_arp": {t.name: a[t.name] for t in self.tasks}, "metrics": adv,
                   "vulnerability": {t.name: relative_task_vulnerability(clean_loss[t.name],
                                                                         torch.cat(self.losses[c][t.name]))
                                     for t in self.tasks},
                   "seconds_per_image": self.seconds[c] / max(self.images, 1)}
            if agg.startswith("single:") and len(self.tasks) > 1:
                row["transferability"] = attack_transferability(row["task_arp"], agg[7:])
            rows.append(row)
        return rows


def _transferability_matrices(rows: list[dict], attacks, eps_list, tasks) -> list[dict]:
    """GB-MTA Eq. 11's ``ARP-Y / ARP-X`` matrix for each (attack, eps) that has a SINGLE-X row for every task."""
    matrices = []
    for a in attacks:
        for e in eps_list:
            singles = {r["aggregation"][7:]: r["task_arp"] for r in rows
                       if r["attack"] == a and r["eps"] == float(e) and "transferability" in r}
            if len(singles) == len(tasks) > 1:
                matrices.append({"attack": a, "eps": float(e), "matrix": transferability_matrix(singles)})
    return matrices


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
    return {"total": "Total", "signtotal": "SignTotal", "gbmta": "GB-MTA", "wgd": "WGD", "wgd_literal": "WGD-literal",
            "wgd_initial": "WGD-init", "wgd_official": "WGD-official", "weighted": "Weighted",
            "autosage": "Auto-SAGE", "gbmta_autosage": "GB-MTA-Auto-SAGE"}.get(agg, agg.replace("single:", "Single-"))


def markdown_tables(res: dict) -> str:
    """GB-MTA Table 1-style ARP table (rows: eps; columns: attack x aggregation, best in bold), per-task
    ARP, relative task vulnerability, and SINGLE-X transferability (Table 12 style)."""
    rows, aggs = res["results"], res["aggregations"]
    lines = ["## ARP (GB-MTA Eq. 10, %, higher = stronger attack)", ""]
    cols = [(a, g) for a in res["attacks"] for g in aggs if any(r["attack"] == a and r["aggregation"] == g for r in rows)]
    head = ["eps (/255)"] + [f"{a.upper()} {_label(g)}" for a, g in cols]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in res["eps"]:
        cells = [f"{e * 255:g}"]
        for a in res["attacks"]:
            vals = {r["aggregation"]: r["arp"] for r in rows if r["attack"] == a and r["eps"] == e}
            finite = [v for v in vals.values() if v is not None and not (isinstance(v, float) and math.isnan(v))]
            best = max(finite) if finite else None
            cells += [f"**{_fmt(vals[g])}**" if vals[g] == best else _fmt(vals[g]) for aa, g in cols if aa == a]
        lines.append("| " + " | ".join(cells) + " |")
    names = [t["name"] for t in res["tasks"]]
    lines += ["", "## Per-task ARP (ARP-X) and relative task vulnerability v_i (Ghamizi et al.; error = task loss, "
              "v_i = relative increase of its mean)", ""]
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
                if tr:
                    lines.append("| " + " | ".join([a, f"{e * 255:g}"] + [_fmt(tr.get(n)) for n in names]) + " |")
    for m in res.get("transferability_matrix", []):
        lines += ["", f"### Transferability matrix ARP-Y / ARP-X ({m['attack'].upper()}, eps {m['eps'] * 255:g}/255; "
                  "row = attacked task X)", ""]
        lines += ["| X \\ Y | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
        for x in names:
            lines.append("| " + " | ".join([x] + [_fmt(m["matrix"][x][y]) for y in names]) + " |")
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
            if not pts:
                continue
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


def plot_transferability(matrix: dict, names: Sequence[str], path: str | os.PathLike, title: str = "") -> None:
    """Heatmap of a transferability matrix ``M[X][Y] = ARP-Y / ARP-X`` (rows: attacked task; GB-MTA Fig. 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arr = np.array([[float("nan") if matrix[x][y] is None else float(matrix[x][y]) for y in names] for x in names])
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 1.6, 1.1 * len(names) + 1.0))
    im = ax.imshow(arr, cmap="viridis", vmin=0, vmax=max(1.0, float(np.nanmax(arr)) if np.isfinite(arr).any() else 1.0))
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_yticks(range(len(names)), [f"Single-{n}" for n in names], fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, "nan" if not np.isfinite(arr[i, j]) else f"{arr[i, j]:.2f}", ha="center", va="center",
                    color="w" if np.isfinite(arr[i, j]) and arr[i, j] < 0.6 else "k", fontsize=8)
    ax.set_xlabel("degraded task Y")
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
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
    if len(cols) == 1:
        cols += [(f"{k[0]} {_label(k[1])}", v) for k, v in ex.items() if k != "clean" and k[2] == e]
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
    names = [t["name"] for t in res["tasks"]]
    for m in res.get("transferability_matrix", []):
        key = f"transfer_{m['attack']}_{m['eps'] * 255:g}_png"
        paths[key] = out / f"{prefix}_transfer_{m['attack']}_eps{m['eps'] * 255:g}.png"
        plot_transferability(m["matrix"], names, paths[key],
                             f"{m['attack'].upper()} SINGLE-X, eps {m['eps'] * 255:g}/255: ARP-Y / ARP-X")
    return {k: str(v) for k, v in paths.items()}


