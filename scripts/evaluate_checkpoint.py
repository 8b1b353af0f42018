#!/usr/bin/env python
"""Re-evaluate a saved checkpoint under inference-only settings: one table row per variant.

    python scripts/evaluate_checkpoint.py saved/Rec2PM-....pth \\
        --variants="exclude_seen=False;exclude_seen=True;memory_mode=append,exclude_seen=True"

A variant is ``KEY=VALUE[,KEY=VALUE...]`` over ``INFERENCE_KEYS`` (empty: as saved); each row is
RecBole's evaluator on the checkpoint's own split and metrics. ``--length_groups=50,200`` adds
Recall / NDCG per history length group. See README.md.
"""

import os
import sys
import time

import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_semprune.analysis import (  # noqa: E402
    load_checkpoint, per_user_metrics, rank_targets, set_exclude_seen, topk_list,
)
from recbole_semprune.benchmark.common import checkpoint_parser, parse_checkpoint_args  # noqa: E402
from recbole_semprune.benchmark.report import markdown_table  # noqa: E402
from recbole_semprune.trainer import exclude_seen as read_exclude_seen  # noqa: E402
from recbole_semprune.utils import get_trainer  # noqa: E402

# key -> type; every one is read at decoding time only
INFERENCE_KEYS = {"exclude_seen": bool, "beam_size": int, "memory_mode": str}


class VariantError(ValueError):
    """A variant names an unknown key, a wrong value, or a key the model does not have."""


def parse_variant(text):
    """``"k=v,k2=v2"`` -> ``{k: v, k2: v2}`` with the types of ``INFERENCE_KEYS``."""
    settings = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, raw = part.partition("=")
        key, kind = key.strip(), INFERENCE_KEYS.get(key.strip())
        if not sep:
            raise VariantError(f"{part!r} is not KEY=VALUE")
        if kind is None:
            raise VariantError(f"{key!r} is not an inference-only key; use one of "
                               f"{', '.join(sorted(INFERENCE_KEYS))}")
        value = yaml.safe_load(raw)
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            raise VariantError(f"{key} must be a {kind.__name__}, got {raw!r}")
        settings[key] = value
    return settings


def apply_variant(model, config, settings):
    """Sets each key on the model (and the config the evaluator reads), checking its value;
    ``exclude_seen`` is every model's (the trainer's history mask)."""
    from recbole_semprune.model.rec2pm import MEMORY_MODES

    for key, value in settings.items():
        if key != "exclude_seen" and not hasattr(model, key):
            raise VariantError(f"{type(model).__name__} has no {key!r}")
    if settings.get("memory_mode", MEMORY_MODES[0]) not in MEMORY_MODES:
        raise VariantError(f"memory_mode must be one of {', '.join(MEMORY_MODES)}")
    if settings.get("beam_size", max(topk_list(config))) < max(topk_list(config)):
        raise VariantError(f"beam_size must be >= the largest topk ({max(topk_list(config))})")
    for key, value in settings.items():
        if key == "exclude_seen":
            set_exclude_seen(model, config, value)
        else:
            setattr(model, key, value)
            config[key] = value


def parse_groups(text):
    """``"50,200"`` -> ``[50, 200]`` (increasing history lengths above 1)."""
    try:
        bounds = [int(part) for part in text.split(",")]
    except ValueError:
        raise VariantError(f"--length_groups must be comma-separated integers, got {text!r}") from None
    if any(b <= 1 for b in bounds) or bounds != sorted(set(bounds)):
        raise VariantError(f"--length_groups must be increasing lengths above 1, got {text!r}")
    return bounds


def metrics_by_length(position, length, bounds, topk):
    """``[(group name, users, {"recall@k": .., "ndcg@k": ..})]`` of the users' target
    positions ``[N]`` grouped by their history lengths ``[N]``."""
    group = torch.bucketize(length, torch.tensor(bounds), right=True)
    names = [f"{lo}-{hi - 1}" for lo, hi in zip([1, *bounds], bounds)] + [f">={bounds[-1]}"]
    rows = []
    for number, name in enumerate(names):
        users = int((group == number).sum())
        values = per_user_metrics(position[group == number], topk)
        rows.append((name, users, {m: float(v.mean()) if users else float("nan") for m, v in values.items()}))
    return rows


def evaluate_variants(model_file, variants, split="test", length_groups=None):
    """``[(variant text, seconds, metrics, rows by length or None)]``, one per variant."""
    parsed = [(text, parse_variant(text)) for text in variants]  # fail before loading
    bounds = parse_groups(length_groups) if length_groups else None
    config, model, data = load_checkpoint(model_file, split)
    saved = {key: getattr(model, key) for key in INFERENCE_KEYS if hasattr(model, key)}
    saved["exclude_seen"] = read_exclude_seen(config)  # every model's, in its config
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    rows = []
    for text, settings in parsed:
        apply_variant(model, config, {**saved, **settings})
        start = time.perf_counter()
        with torch.no_grad():
            result = trainer.evaluate(data, load_best_model=False, show_progress=False)
            seconds = time.perf_counter() - start
        groups = bounds and metrics_by_length(*rank_targets(model, config, data)[:2], bounds,
                                              topk_list(config))
        rows.append((text or "(as saved)", seconds, result, groups))
    return rows


def markdown(rows):
    metrics = list(rows[0][2])
    tables = [markdown_table(["variant", "eval s", *metrics], rows, lambda r: [
        r[0], f"{r[1]:.1f}", *(f"{r[2][m]:.4f}" for m in metrics)], text=["variant"])]
    if rows[0][3]:
        names, groups = list(rows[0][3][0][2]), [(r[0], *g) for r in rows for g in r[3]]
        tables.append(markdown_table(
            ["variant", "history length", "users", *names], groups,
            lambda g: [g[0], g[1], str(g[2]), *(f"{g[3][m]:.4f}" for m in names)],
            text=["variant", "history length"]))
    return "\n\n".join(tables)


def main(argv=None):
    parser = checkpoint_parser(__doc__, exclude_seen=False, help="a checkpoint of a plugin run")
    parser.add_argument("--variants", default="", help="';'-separated KEY=VALUE[,KEY=VALUE] sets")
    parser.add_argument("--output", default=None, help="also write the table to this file")
    parser.add_argument("--length_groups", default=None, help="history lengths, e.g. 50,200")
    args = parse_checkpoint_args(parser, argv)
    try:
        rows = evaluate_variants(args.model_file, args.variants.split(";"), args.split, args.length_groups)
    except VariantError as error:
        parser.error(str(error))
    print(markdown(rows))
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(markdown(rows) + "\n")
    return rows


if __name__ == "__main__":
    main()
