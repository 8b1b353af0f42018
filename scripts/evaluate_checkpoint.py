#!/usr/bin/env python
"""Re-evaluate a saved checkpoint under inference-only settings: one table row per variant.

The weights stay the checkpoint's; only what decoding does changes, so the rows compare
settings on one trained model (no retraining noise). Each row is RecBole's evaluator on the
checkpoint's own split and metrics (its ``metrics`` / ``topk``), like the test result of the
run that wrote it::

    python scripts/evaluate_checkpoint.py saved/Rec2PM-Nov-23-2026_19-23-32.pth \\
        --variants="exclude_seen=False;exclude_seen=True;memory_mode=append,exclude_seen=True"

A variant is ``KEY=VALUE[,KEY=VALUE...]`` over the keys in ``INFERENCE_KEYS``; an empty variant
is the checkpoint as saved. ``--split=valid`` evaluates the validation rows instead of the test
rows. Prints a markdown table (variant, seconds, metrics) and, with ``--output``, writes it
there too.

``--length_groups=50,200`` adds a table of Recall / NDCG at the checkpoint's ``topk`` per
history length (the length the model reads, after ``MAX_ITEM_LIST_LENGTH``): here under 50,
50 to 199 and 200 or more items, each variant on its own rows. The groups' figures, weighted
by their numbers of users, average to the first table's.
"""

import argparse
import os
import sys
import time

import torch
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from recbole_semprune.analysis import (  # noqa: E402
    per_user_metrics, set_exclude_seen, target_positions, topk_list,
)
from recbole_semprune.quick_start import load_data_and_model  # noqa: E402
from recbole_semprune.trainer import exclude_seen as read_exclude_seen  # noqa: E402
from recbole_semprune.utils import get_trainer  # noqa: E402

# key -> (type, what it changes); every one is read at decoding time only
INFERENCE_KEYS = {
    "exclude_seen": (bool, "rank no item of the input history (every model; SID models: not in the beam)"),
    "beam_size": (int, "beams of the constrained beam search"),
    "memory_mode": (str, "Rec2PM's memory at inference: overwrite or append"),
}


class VariantError(ValueError):
    """A variant names an unknown key, a wrong value, or a key the model does not have."""


def parse_variant(text):
    """``"k=v,k2=v2"`` -> ``{k: v, k2: v2}`` with the types of ``INFERENCE_KEYS``."""
    settings = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep:
            raise VariantError(f"{part!r} is not KEY=VALUE")
        if key not in INFERENCE_KEYS:
            known = ", ".join(sorted(INFERENCE_KEYS))
            raise VariantError(f"{key!r} is not an inference-only key; use one of {known}")
        kind = INFERENCE_KEYS[key][0]
        value = yaml.safe_load(raw)
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            raise VariantError(f"{key} must be a {kind.__name__}, got {raw!r}")
        settings[key] = value
    return settings


def apply_variant(model, config, settings):
    """Sets each key on the model (and the config the evaluator reads), checking its value;
    ``exclude_seen`` is every model's (the trainer's history mask)."""
    for key, value in settings.items():
        if key != "exclude_seen" and not hasattr(model, key):
            raise VariantError(f"{type(model).__name__} has no {key!r}")
    if "memory_mode" in settings:
        from recbole_semprune.model.rec2pm import MEMORY_MODES

        if settings["memory_mode"] not in MEMORY_MODES:
            raise VariantError(f"memory_mode must be one of {', '.join(MEMORY_MODES)}")
    topk = topk_list(config)
    if "beam_size" in settings and settings["beam_size"] < max(topk):
        raise VariantError(f"beam_size must be >= the largest topk ({max(topk)})")
    for key, value in settings.items():
        if key == "exclude_seen":
            set_exclude_seen(model, config, value)
        else:
            setattr(model, key, value)
            config[key] = value


def parse_groups(text):
    """``"50,200"`` -> ``[50, 200]`` (increasing positive history lengths)."""
    try:
        bounds = [int(part) for part in text.split(",")]
    except ValueError:
        raise VariantError(f"--length_groups must be comma-separated integers, got {text!r}") from None
    if any(b <= 1 for b in bounds) or bounds != sorted(set(bounds)):
        raise VariantError(f"--length_groups must be increasing lengths above 1, got {text!r}")
    return bounds


def group_names(bounds):
    edges = [1, *bounds]
    names = [f"{lo}-{hi - 1}" for lo, hi in zip(edges, bounds)]
    return names + [f">={bounds[-1]}"]


def metrics_by_length(position, length, bounds, topk):
    """``[(group name, users, {"recall@k": .., "ndcg@k": ..})]`` of the users' target
    positions ``[N]`` grouped by their history lengths ``[N]``."""
    group = torch.bucketize(length, torch.tensor(bounds), right=True)
    rows = []
    for number, name in enumerate(group_names(bounds)):
        values = per_user_metrics(position[group == number], topk)
        users = int((group == number).sum())
        rows.append((name, users, {m: float(v.mean()) if users else float("nan") for m, v in values.items()}))
    return rows


def evaluate_variants(model_file, variants, split="test", length_groups=None):
    """``[(variant text, seconds, OrderedDict of metrics, rows by length or None)]``, one per
    variant, in order."""
    parsed = [(text, parse_variant(text)) for text in variants]  # fail before loading
    bounds = parse_groups(length_groups) if length_groups else None
    config, model, _, _, valid_data, test_data = load_data_and_model(model_file)
    saved = {key: getattr(model, key) for key in INFERENCE_KEYS if hasattr(model, key)}
    saved["exclude_seen"] = read_exclude_seen(config)  # every model's, in its config
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    data = valid_data if split == "valid" else test_data
    rows = []
    for text, settings in parsed:
        apply_variant(model, config, {**saved, **settings})
        start = time.perf_counter()
        with torch.no_grad():
            result = trainer.evaluate(data, load_best_model=False, show_progress=False)
        seconds = time.perf_counter() - start
        groups = None
        if bounds:
            topk = topk_list(config)
            with torch.no_grad():
                position, length, _ = target_positions(
                    model.eval(), data, max(topk), read_exclude_seen(config)
                )
            groups = metrics_by_length(position, length, bounds, topk)
        rows.append((text or "(as saved)", seconds, result, groups))
    return rows


def markdown(rows):
    metrics = list(rows[0][2])
    lines = [
        "| variant | eval s | " + " | ".join(metrics) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in metrics) + " |",
    ]
    for text, seconds, result, _ in rows:
        values = " | ".join(f"{result[m]:.4f}" for m in metrics)
        lines.append(f"| {text} | {seconds:.1f} | {values} |")
    if rows[0][3]:
        names = list(rows[0][3][0][2])
        lines += ["", "| variant | history length | users | " + " | ".join(names) + " |",
                  "| --- | --- | ---: | " + " | ".join("---:" for _ in names) + " |"]
        for text, _, _, groups in rows:
            for name, users, values in groups:
                cells = " | ".join(f"{values[m]:.4f}" for m in names)
                lines.append(f"| {text} | {name} | {users} | {cells} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_file", help="a checkpoint written by a plugin run (saved/...pth)")
    parser.add_argument("--variants", default="", help="';'-separated KEY=VALUE[,KEY=VALUE] sets")
    parser.add_argument("--split", choices=["test", "valid"], default="test")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--output", default=None, help="also write the table to this file")
    parser.add_argument("--length_groups", default=None,
                        help="history lengths that split users into groups, e.g. 50,200")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.model_file):
        parser.error(f"no checkpoint at {args.model_file}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        rows = evaluate_variants(args.model_file, args.variants.split(";"), args.split,
                                 args.length_groups)
    except VariantError as error:
        parser.error(str(error))
    table = markdown(rows)
    print(table)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(table + "\n")
    return rows


if __name__ == "__main__":
    main()
