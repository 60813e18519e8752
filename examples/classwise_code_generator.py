"""Add a fixed class-wise luma code to an exported MTL-UE generator (or replace its perturbation with one).

The question it answers: can a shortcut that grayscale and PGD-AT 4/255 cannot remove protect these faces?
A luma code (the same value on R, G and B) passes the ISS grayscale defense unchanged (the BT.601 weights sum
to 1), and at 8/255 its amplitude is twice PGD-AT's 4/255 budget.  Class-wise synthetic codes of this kind
(LSP / "synthetic noise", Yu et al., KDD 2022, "Availability attacks create shortcuts") make CIFAR-10 unlearnable
for victims trained with crop-and-flip (APBench: LSP leaves ResNet-18 at 13 % test accuracy); this tool builds
engine-ready generators that carry one, so the deploy protocol can measure it on the engine's own output.

The exported graph's perturbation ``d`` (the generator's clipped delta, before it is added to the image)
becomes ``Clip(w * d + code(labels), -eps, eps)``, with ``code = sum_k P_k[y_k]`` (one table per classification
task; a label of -1, an unprotected task, selects a zero row) in generator pixels, upsampled by the engine like
any delta.  ``--gen-weight 0`` leaves the code alone.  Layouts (``amp`` = ``--code-amp`` x eps):

* ``quadrant``: task k owns quadrant k of a 2x2 grid; per class, random +-amp cells of ``--cell`` pixels
  (MTL-UE A.1's patch fusion of LSP, at full L-inf amplitude instead of an l2 budget);
* ``sum``: every task's random +-amp/K cell code over the whole image, summed (linear in the labels);
* ``grating``: task k a cosine grating of period (8, 5, 3.2) px, class c its orientation pi * c / C_k (a
  random phase each), amplitude amp/K: a code that a crop moves but does not cut (orientation survives
  translation and scaling).

Measured (reports/protection_deploy_classwise.md): none of these codes is learned by the deploy protocol's
ResNet-18 victims, and giving half the budget to one halves the bundled generator's protection.

Usage (the report's generators):
    python examples/classwise_code_generator.py python/mtlguard/assets/default_generator.onnx \\
        runs/gens/lspq8.onnx --layout quadrant --gen-weight 0 --code-amp 1 --seed 1234
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

LAYOUTS = ("quadrant", "sum", "grating")
GRATING_PERIODS = (8.0, 5.0, 3.2)  # generator pixels, one per task (more tasks reuse them)


def code_tables(tasks: list[dict], size: tuple[int, int], layout: str, amp: float, cell: int,
                seed: int) -> list[np.ndarray]:
    """Per classification task, ``[C_k + 1, 1, H, W]`` float32 codes (row ``C_k`` is zero: label -1)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    h, w = size
    if layout != "grating" and (cell < 1 or (h // 2 if layout == "quadrant" else h) < cell):
        raise ValueError(f"cell must be 1..{h // 2 if layout == 'quadrant' else h} pixels for {layout!r}, got {cell}")
    if layout == "quadrant" and len(tasks) > 4:
        raise ValueError(f"the quadrant layout holds 4 tasks, the generator has {len(tasks)}")
    rng = np.random.default_rng(seed)
    k_all = len(tasks)
    tables = []
    for k, task in enumerate(tasks):
        c = int(task["num_classes"])
        if layout == "quadrant":
            pat = np.zeros((c, 1, h, w), np.float32)
            r, col = divmod(k, 2)
            hh, ww = h // 2, w // 2
            cells = rng.choice([-1.0, 1.0], size=(c, 1, hh // cell, ww // cell)).astype(np.float32)
            block = cells.repeat(cell, 2).repeat(cell, 3)
            pat[:, :, r * hh:r * hh + block.shape[2], col * ww:col * ww + block.shape[3]] = block
            pat *= amp
        elif layout == "sum":
            cells = rng.choice([-1.0, 1.0], size=(c, 1, -(-h // cell), -(-w // cell))).astype(np.float32)
            pat = cells.repeat(cell, 2).repeat(cell, 3)[:, :, :h, :w] * (amp / k_all)
        else:
            period = GRATING_PERIODS[k % len(GRATING_PERIODS)]
            yy, xx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
            pat = np.zeros((c, 1, h, w), np.float32)
            for ci in range(c):
                theta = np.pi * (ci + 0.5 * (k % 2)) / c
                phase = rng.uniform(0, 2 * np.pi)
                pat[ci, 0] = np.cos(2 * np.pi / period * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
            pat *= amp / k_all
        tables.append(np.concatenate([pat, np.zeros((1, 1, h, w), np.float32)]).astype(np.float32))
    return tables


def add_code(model, layout: str, code_amp: float, gen_weight: float, cell: int = 4, seed: int = 0):
    """The generator ``model`` (an ``onnx.ModelProto``, edited in place and returned) with the class-wise code."""
    from onnx import helper, numpy_helper

    from mtlguard.export.int8 import find_eps_clip
    from mtlguard.export.metadata import GeneratorFacts, config_hash

    props = {p.key: p.value for p in model.metadata_props}
    facts = GeneratorFacts.from_props(props, source="generator")
    if facts.io != "float32_nchw":
        raise ValueError(f"the generator's io is {facts.io!r}; this tool edits float32_nchw exports")
    tasks = [t for t in facts.tasks if t.get("kind", "multiclass") != "dense" and int(t.get("num_classes", 0)) > 0]
    if len(tasks) != len(facts.tasks):
        raise ValueError("the generator has dense tasks; class-wise codes are defined for classification tasks")
    if not (0 <= gen_weight <= 1 and 0 <= code_amp <= len(tasks)) or gen_weight + code_amp == 0:
        raise ValueError(f"--gen-weight must lie in [0, 1] and --code-amp in [0, {len(tasks)}] (the number of "
                         f"tasks: sum and grating split it over them), not both 0; got {gen_weight}, {code_amp}")
    g = model.graph
    eps = float(facts.eps)
    clip = find_eps_clip(model, eps)  # the generator's Clip(-eps, eps): its output is the perturbation
    if clip is None:
        raise ValueError(f"no Clip(-eps, eps) node in the generator graph (eps {eps:.6g})")
    delta = clip.output[0]
    consumers = [n for n in g.node if delta in n.input]
    tables = code_tables(tasks, facts.image_size, layout, code_amp * eps, cell, seed)
    inits, nodes, terms = [], [], []
    for k, table in enumerate(tables):
        inits += [numpy_helper.from_array(table, f"code_table_{k}"),
                  numpy_helper.from_array(np.array(k, np.int64), f"code_task_{k}")]
        nodes += [helper.make_node("Gather", ["labels", f"code_task_{k}"], [f"code_label_{k}"], axis=1),
                  helper.make_node("Gather", [f"code_table_{k}", f"code_label_{k}"], [f"code_term_{k}"], axis=0)]
        terms.append(f"code_term_{k}")
    inits += [numpy_helper.from_array(np.array(gen_weight, np.float32), "code_gen_weight"),
              numpy_helper.from_array(np.array(-eps, np.float32), "code_lo"),
              numpy_helper.from_array(np.array(eps, np.float32), "code_hi")]
    nodes += [helper.make_node("Sum", terms, ["code_sum"]),
              helper.make_node("Mul", [delta, "code_gen_weight"], ["code_gen_delta"]),
              helper.make_node("Add", ["code_gen_delta", "code_sum"], ["code_mixed"]),
              helper.make_node("Clip", ["code_mixed", "code_lo", "code_hi"], ["code_delta"])]
    for node in consumers:  # everything that read the perturbation now reads the mixed one
        node.input[:] = ["code_delta" if x == delta else x for x in node.input]
    at = list(g.node).index(clip) + 1
    for j, n in enumerate(nodes):
        g.node.insert(at + j, n)
    g.initializer.extend(inits)
    facts.config = {**facts.config, "classwise_code": {
        "layout": layout, "code_amp": code_amp, "gen_weight": gen_weight, "cell": cell, "seed": seed,
        "source": "examples/classwise_code_generator.py"}}
    facts.config_hash = config_hash(facts.config)
    props = {**{p.key: p.value for p in model.metadata_props}, **facts.to_props()}
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("generator", help="an exported mtlguard ONNX generator (float32_nchw)")
    p.add_argument("out", help="where to write the new generator (must not exist)")
    p.add_argument("--layout", choices=LAYOUTS, default="quadrant")
    p.add_argument("--code-amp", type=float, default=1.0, help="the code's L-inf amplitude in units of eps (sum / grating: of all tasks together; the result is clipped to eps)")
    p.add_argument("--gen-weight", type=float, default=0.0, help="weight of the generator's own perturbation")
    p.add_argument("--cell", type=int, default=4, help="code cell size in generator pixels (quadrant, sum)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    import onnx

    from mtlguard.atomic import atomic_write
    from mtlguard.export.metadata import load_onnx

    out = Path(a.out)
    if out.exists():
        print(f"classwise_code_generator: {out}: exists; choose another output path", file=sys.stderr)
        return 2
    try:
        model = add_code(load_onnx(a.generator), a.layout, a.code_amp, a.gen_weight, a.cell, a.seed)
        onnx.checker.check_model(model)
    except (FileNotFoundError, ValueError) as e:
        print(f"classwise_code_generator: {a.generator}: {e}", file=sys.stderr)
        return 2
    try:
        atomic_write(out, lambda tmp: onnx.save_model(model, tmp), overwrite=False)
    except FileExistsError:  # appeared while the model was built
        print(f"classwise_code_generator: {out}: exists; choose another output path", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(out), "layout": a.layout, "code_amp": a.code_amp, "gen_weight": a.gen_weight,
                      "cell": a.cell, "seed": a.seed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
