"""Protection ratios, tables and figures of the deployment protocol (:mod:`.deploy`).

``PR = (acc_clean - acc_protected) / (acc_clean - acc_majority)`` per task, where ``acc_clean`` is the
same victim recipe behind the same defense trained on the clean files (same seeds), and
``acc_majority`` the test set's majority-class rate.  PR = 1: nothing learned beyond the majority class;
0: no protection; > 1: worse than a constant.  With several seeds, accuracies are averaged first and PR
is taken of the means; the spread of the per-seed PRs is reported next to it.  "Worst task" is the
smallest PR of a row; "worst defense" the smallest worst-task PR over a method's defenses (as
APBench reports a worst case).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..atomic import atomic_write


def protection_ratio(acc_clean: float, acc_protected: float, acc_majority: float) -> float:
    """``(acc_clean - acc_protected) / (acc_clean - acc_majority)``; NaN when the clean victim is at or
    below the majority rate (nothing to protect)."""
    gap = acc_clean - acc_majority
    if gap <= 1e-9:
        return float("nan")
    return (acc_clean - acc_protected) / gap


def _cell(results: Mapping[str, dict], method: str, output: str, defense: str, victim: str) -> list[dict]:
    return sorted((r for r in results.values() if r["method"] == method and r["output"] == output
                   and r["defense"] == defense and r["victim"] == victim), key=lambda r: r["seed"])


def summarize(results: Mapping[str, dict], tasks: Sequence[str], majority: Mapping[str, float]) -> list[dict]:
    """One row per (method, output, defense, victim) with finished runs: mean / std accuracy per task over
    the seeds that both it and its clean reference have, PR per task, per-seed PR spread, worst task."""
    rows = []
    keys = sorted({(r["method"], r["output"], r["defense"], r["victim"]) for r in results.values()
                   if r["method"] != "clean"})
    for method, output, defense, victim in keys:
        prot = {r["seed"]: r for r in _cell(results, method, output, defense, victim)}
        clean = {r["seed"]: r for r in _cell(results, "clean", "files", defense, victim)}
        seeds = sorted(set(prot) & set(clean))
        if not seeds:
            continue
        row = {"method": method, "output": output, "defense": defense, "victim": victim, "seeds": seeds,
               "acc": {}, "acc_std": {}, "clean": {}, "pr": {}, "pr_std": {}}
        for t in tasks:
            p = np.array([prot[s]["test"][t] for s in seeds])
            c = np.array([clean[s]["test"][t] for s in seeds])
            row["acc"][t], row["acc_std"][t] = float(p.mean()), float(p.std())
            row["clean"][t] = float(c.mean())
            row["pr"][t] = protection_ratio(float(c.mean()), float(p.mean()), majority[t])
            per_seed = [protection_ratio(ci, pi, majority[t]) for ci, pi in zip(c, p)]
            row["pr_std"][t] = float(np.std(per_seed)) if len(seeds) > 1 else 0.0
        prs = [v for v in row["pr"].values() if not math.isnan(v)]
        row["worst_pr"] = min(prs) if prs else float("nan")
        row["worst_task"] = min((k for k in row["pr"] if not math.isnan(row["pr"][k])), key=row["pr"].get,
                                default="-")
        rows.append(row)
    return rows


def _pct(v: float, sd: float | None = None) -> str:
    if sd:
        return f"{100 * v:.1f}±{100 * sd:.1f}"
    return f"{100 * v:.1f}"


def _pr(v: float, sd: float | None = None) -> str:
    if math.isnan(v):
        return "n/a"
    return f"{v:.2f}" + (f"±{sd:.2f}" if sd else "")


def victim_table(rows: Sequence[dict], tasks: Sequence[str], defense: str = "standard", output: str = "png",
                 label=str) -> str:
    """Headline table: method x victim under ``defense``: accuracy (clean -> protected) and PR per task."""
    sel = [r for r in rows if r["defense"] == defense and r["output"] == output]
    head = ["method", "victim", "seeds"] + [f"{t} clean / prot. (%)" for t in tasks] + [f"PR {t}" for t in tasks] + \
        ["worst task PR"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sel:
        cells = [label(r["method"]), r["victim"], str(len(r["seeds"]))]
        cells += [f"{_pct(r['clean'][t])} / {_pct(r['acc'][t], r['acc_std'][t])}" for t in tasks]
        cells += [_pr(r["pr"][t], r["pr_std"][t]) for t in tasks]
        cells.append(f"**{_pr(r['worst_pr'])}** ({r['worst_task']})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def defense_matrix(rows: Sequence[dict], victim: str, defenses: Sequence[str], output: str = "png") -> dict:
    """``{method: {defense: row}}`` for ``victim``."""
    out: dict[str, dict[str, dict]] = {}
    for r in rows:
        if r["victim"] == victim and r["output"] == output and r["defense"] in defenses:
            out.setdefault(r["method"], {})[r["defense"]] = r
    return out


def defense_table(rows: Sequence[dict], victim: str, defenses: Sequence[str], tasks: Sequence[str],
                  label=str, output: str = "png") -> str:
    """Methods x defenses on ``victim``: each cell the PR per task (worst task in bold; with several seeds the
    PR of the mean accuracies ± the per-seed spread), plus the column "worst defense" (smallest worst-task PR
    over the defenses with results)."""
    mat = defense_matrix(rows, victim, defenses, output)
    head = ["method"] + list(defenses) + ["worst defense"]
    lines = [f"PR {' / '.join(tasks)} (worst task in bold), victim {victim}:", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, cells in mat.items():
        row = [label(method)]
        for d in defenses:
            r = cells.get(d)
            if r is None:
                row.append("-")
                continue
            row.append(" / ".join(f"**{_pr(r['pr'][t], r['pr_std'][t])}**" if t == r["worst_task"]
                                  else _pr(r["pr"][t], r["pr_std"][t]) for t in tasks))
        worst = [(cells[d]["worst_pr"], d) for d in defenses if d in cells and not math.isnan(cells[d]["worst_pr"])]
        row.append(f"{_pr(min(worst)[0])} ({min(worst)[1]})" if worst else "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def heatmap(rows: Sequence[dict], victims: Sequence[str], defense_victim: str, defenses: Sequence[str],
            path: str | os.PathLike, label=str) -> Path:
    """Two panels colored by worst-task PR: methods x victims (standard training, PNG output) and
    methods x defenses (``defense_victim``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({r["method"] for r in rows}, key=lambda m: [r["method"] for r in rows].index(m))
    std = {(r["method"], r["victim"]): r["worst_pr"] for r in rows if r["defense"] == "standard" and r["output"] == "png"}
    mat = defense_matrix(rows, defense_victim, defenses)
    panels = [("standard training: victim", victims, lambda m, c: std.get((m, c))),
              (f"defense ({defense_victim})", list(defenses), lambda m, c: mat.get(m, {}).get(c, {}).get("worst_pr"))]
    fig, axes = plt.subplots(1, 2, figsize=(4 + 0.9 * (len(victims) + len(defenses)), 1.2 + 0.5 * len(methods)),
                             squeeze=False)
    for k, (ax, (title, cols, get)) in enumerate(zip(axes[0], panels)):
        data = np.full((len(methods), len(cols)), np.nan)
        for i, m in enumerate(methods):
            for j, c in enumerate(cols):
                v = get(m, c)
                if v is not None:
                    data[i, j] = v
        im = ax.imshow(np.clip(data, -0.5, 1.5), cmap="RdYlGn", vmin=-0.5, vmax=1.5, aspect="auto")
        for i in range(len(methods)):
            for j in range(len(cols)):
                ax.text(j, i, "-" if np.isnan(data[i, j]) else f"{data[i, j]:.2f}", ha="center", va="center",
                        fontsize=7)
        ax.set_xticks(range(len(cols)), cols, rotation=35, ha="right", fontsize=7)
        ax.set_yticks(range(len(methods)), [label(m) for m in methods] if k == 0 else [], fontsize=7)  # rows shared
        ax.set_title(f"worst-task PR, {title}", fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="PR (1 = majority class, 0 = clean)")
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight"))
    finally:
        plt.close(fig)


def tradeoff_points(rows: Sequence[dict], defense_victim: str, defenses: Sequence[str],
                    output: str = "png") -> dict[str, tuple[float, float]]:
    """``{method: (x, y)}``: x = the worst-task PR under standard training over every victim measured, y = the
    worst-task PR over ``defenses`` other than standard on ``defense_victim``; methods missing either are left
    out.  The numbers the goals are stated in (standard >= 0.9 on every victim, >= 0.6 behind every cheap
    defense, >= 0.3 under PGD-AT), one point per generator."""
    std: dict[str, float] = {}
    for r in rows:
        if r["defense"] == "standard" and r["output"] == output:
            std[r["method"]] = min(std.get(r["method"], np.inf), r["worst_pr"])
    behind = {m: min(cells[d]["worst_pr"] for d in cells if d != "standard")
              for m, cells in defense_matrix(rows, defense_victim, defenses, output).items()
              if any(d != "standard" for d in cells)}
    return {m: (std[m], behind[m]) for m in std if m in behind}


def label_stacks(points: Mapping[str, tuple[float, float]], x_span: float, y_span: float) -> dict[str, int]:
    """Per point, how many points placed before it (lowest first) lie within 8 % of ``x_span`` and 4 % of
    ``y_span``: its label is raised by that many lines, so generators at (nearly) the same place stay readable."""
    placed: list[tuple[float, float]] = []
    out = {}
    for m, (x, y) in sorted(points.items(), key=lambda kv: (kv[1][1], kv[1][0], kv[0])):
        out[m] = sum(1 for px, py in placed if abs(px - x) < 0.08 * x_span and abs(py - y) < 0.04 * y_span)
        placed.append((x, y))
    return out


def _number_key(numbers: Mapping[str, int], label, columns: int = 3) -> str:
    """``numbers`` as a monospace key, ``columns`` entries per line, numbered down the columns."""
    entries = [f"{n:>2} {label(m)}" for m, n in sorted(numbers.items(), key=lambda kv: kv[1])]
    rows = -(-len(entries) // columns)
    width = max(map(len, entries)) + 3
    return "\n".join("".join(entries[c * rows + r].ljust(width) for c in range(columns) if c * rows + r < len(entries))
                     for r in range(rows))


def tradeoff_plot(rows: Sequence[dict], defense_victim: str, defenses: Sequence[str], path: str | os.PathLike,
                  label=str, goals: tuple[float, float, float] = (0.9, 0.6, 0.3), max_named: int = 6) -> Path | None:
    """Scatter of :func:`tradeoff_points` with the goal lines: one panel for the cheap defenses (every column but
    standard and PGD-AT; goal ``goals[1]``), one for PGD-AT (``goals[2]``); ``None`` (nothing written) when no
    panel has 2 points.  Up to ``max_named`` generators are labelled by name, more by number with a key below."""
    cheap = [d for d in defenses if d not in ("standard", "at")]
    panels = [(title, goal, tradeoff_points(rows, defense_victim, ["standard", *cols]))
              for title, goal, cols in ((f"worst cheap defense ({', '.join(cheap)})", goals[1], cheap),
                                        ("PGD-AT", goals[2], ["at"] if "at" in defenses else []))
              if cols]
    panels = [p for p in panels if len(p[2]) >= 2]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({m for _, _, points in panels for m in points}, key=lambda m: str(label(m)))
    # many generators: points carry numbers and a key below the figure lists them (names would overprint)
    numbers = {m: i + 1 for i, m in enumerate(methods)} if len(methods) > max_named else {}
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.8), squeeze=False,
                             constrained_layout=True)
    for ax, (title, goal, points) in zip(axes[0], panels):
        xs, ys = zip(*points.values())
        ax.scatter(xs, ys, s=18, color="tab:blue", zorder=3)
        ax.axvline(goals[0], color="tab:green", ls="--", lw=1, label=f"standard goal {goals[0]:g}")
        ax.axhline(goal, color="tab:orange", ls="--", lw=1, label=f"goal {goal:g}")
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        for m, stack in label_stacks(points, x1 - x0, y1 - y0).items():
            x, y = points[m]
            right = x > x0 + 0.6 * (x1 - x0)  # labels of points on the right run leftwards, inside the panel
            ax.annotate(str(numbers[m]) if numbers else label(m), (x, y), fontsize=7 if numbers else 6,
                        xytext=(-3 if right else 3, 3 + 8 * stack), textcoords="offset points",
                        ha="right" if right else "left")
        ax.set_xlabel("worst-task PR under standard training, worst victim measured")
        ax.set_ylabel(f"worst-task PR, {title} ({defense_victim})", fontsize=8)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    fig.suptitle("protection trade-off, one point per generator (up and right is better)", fontsize=9)
    if numbers:
        fig.text(0.01, 0.0, _number_key(numbers, label), va="top", ha="left", fontsize=7, family="monospace")
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight"))
    finally:
        plt.close(fig)


def _victim_threads(results: Mapping[str, dict]) -> str:
    """``"2 CPU threads"``: what the victim runs recorded; runs made before they recorded it are not counted
    (then the count is this process's, said so)."""
    import torch

    seen = sorted({int(r["threads"]) for r in results.values() if "threads" in r})
    if seen and all("threads" in r for r in results.values()):
        return f"victims trained with {'/'.join(map(str, seen))} CPU threads"
    return f"{torch.get_num_threads()} CPU threads when this report was written (not every victim run recorded its own)"


def write_deploy_report(results: Mapping[str, dict], *, tasks: Sequence[str], majority: Mapping[str, float],
                        config: dict, stem: str | os.PathLike, command: str, planned: int, label=str,
                        extra_md: str = "") -> dict[str, Path]:
    """``<stem>.json`` (every run, the summary rows, config, command, versions), ``<stem>.md`` (command,
    protocol, headline / defense / JPEG-output tables with PR) and ``<stem>.png`` (heatmaps)."""
    import json
    import platform

    import torch

    from ..atomic import atomic_write_text

    stem = Path(stem)
    rows = summarize(results, tasks, majority)
    victims = [_strip_seeds(v) for v in config["victims"]]
    env = {"device": config.get("device", "cpu"), "torch": torch.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "threads": torch.get_num_threads(),
           "victim_threads": _victim_threads(results)}
    payload = {"command": command, "config": config, "environment": env, "tasks": list(tasks),
               "majority": dict(majority), "planned_runs": planned, "finished_runs": len(results),
               "summary": rows, "runs": dict(results)}
    atomic_write_text(stem.with_suffix(".json"), json.dumps(payload, indent=1, default=float))
    defense_victim = _strip_seeds(config["defense_victim"])  # results are keyed without the xN seed count
    png = heatmap(rows, victims, defense_victim, config["defenses"], stem.with_suffix(".png"), label)
    tradeoff = tradeoff_plot(rows, defense_victim, config["defenses"], stem.with_name(stem.name + "_tradeoff.png"),
                             label)
    rec = config["recipe"]
    md = [f"# Deployment-protocol protection report ({', '.join(tasks)})", "",
          f"Command: `{command}`", "",
          f"Data: {config['train_size']} training / {config['test_size']} test images at native "
          f"{config['native_size']} px; eps {config['eps'] * 255:.0f}/255; seed {config['seed']} (victim seeds "
          f"0..n-1); device {env['device']}, torch {env['torch']}, {env['victim_threads']}.  Finished "
          f"{len(results)} of {planned} planned victim runs.", "",
          f"Victims: trained on the files the engine wrote (PNG unless stated), RandomResizedCrop(scale "
          f"{tuple(rec['crop_scale'])}) + flip, Adam lr {rec['lr']}, batch {rec['batch_size']}, {rec['epochs']} epochs "
          f"(LR x0.1 at {', '.join(str(m) for m in rec['milestones'])} of training); test accuracy = mean of the "
          f"last {rec['average_last']} epochs on clean test images.  PR = (acc_clean - acc_protected) / "
          f"(acc_clean - acc_majority), with acc_clean from the same victim recipe and defense on the clean "
          f"files; majority rates {', '.join(f'{t} {100 * majority[t]:.1f}%' for t in tasks)}.", "",
          "## Standard training", "", victim_table(rows, tasks, label=label), "",
          f"## Defenses ({defense_victim})", "",
          defense_table(rows, defense_victim, config["defenses"], tasks, label), ""]
    jpeg_rows = [r for r in rows if r["output"].startswith("jpeg")]
    if jpeg_rows:
        md += [f"## Engine output as JPEG (quality {config['jpeg_quality']})", "",
               victim_table(rows, tasks, output=f"jpeg{config['jpeg_quality']}", label=label), ""]
    md += [f"Heatmaps of the worst-task PR: `{png.name}`."
           + (f"  Trade-off (worst victim measured under standard training vs worst defense, one point per "
              f"generator): `{tradeoff.name}`." if tradeoff is not None else ""), "", extra_md]
    atomic_write_text(stem.with_suffix(".md"), "\n".join(md) + "\n")
    return {"json": stem.with_suffix(".json"), "md": stem.with_suffix(".md"), "png": png,
            **({"tradeoff_png": tradeoff} if tradeoff is not None else {})}


def _strip_seeds(victim: str) -> str:
    from .victims import VictimSpec

    return VictimSpec.parse(victim).key
