#!/usr/bin/env python
"""Re-evaluate saved checkpoints: inference-only variants of one, or a paired comparison of two.

    python scripts/evaluate_checkpoint.py saved/Rec2PM-....pth \\
        --variants="exclude_seen=False;exclude_seen=True;memory_mode=append,exclude_seen=True"
    python scripts/evaluate_checkpoint.py --compare A.pth B.pth [A2.pth B2.pth ...]

A variant is ``KEY=VALUE[,KEY=VALUE...]`` over ``INFERENCE_KEYS`` (empty: as saved); each row is
RecBole's evaluator on the checkpoint's own split and metrics. ``--length_groups=50,200`` adds
Recall / NDCG per history length group; ``--code_ranks`` (SID models), how often the target's
code at each level comes first given the target's own prefix, by the target's count in
training. ``--compare``: per metric A, B, the mean per-user difference A - B, its standard
error and their ratio; several pairs (seeds) pool per user (README.md, docs/results.md).
"""

import os
import sys
import time

import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_semprune.analysis import (  # noqa: E402
    code_ranks, difference_cells, equal_groups, groups_of, load_checkpoint, metrics_by_group,
    per_user_metrics, pooled_difference, rank_targets, set_exclude_seen, topk_list,
    training_counts,
)
from recbole_semprune.benchmark.common import checkpoint_parser, parse_checkpoint_args  # noqa: E402
from recbole_semprune.benchmark.report import markdown_table  # noqa: E402
from recbole_semprune.trainer import exclude_seen as read_exclude_seen  # noqa: E402
from recbole_semprune.utils import get_trainer  # noqa: E402

# key -> type; every one is read at decoding time only
INFERENCE_KEYS = {"exclude_seen": bool, "beam_size": int, "memory_mode": str,
                  "retrieval_beam_weight": float}


class VariantError(ValueError):
    """A variant names an unknown key, a wrong value, or a key the model does not have."""


class CompareError(ValueError):
    """The two checkpoints cannot be compared user by user."""


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
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            raise VariantError(f"{key} must be a {kind.__name__}, got {raw!r}")
        settings[key] = value
    return settings


def holder(model, key):
    """``(object, attribute)`` holding the inference key ``key``: the model, or a component
    (``retrieval_beam_weight``: the dense retrieval's ``beam_weight``; None without one)."""
    if key == "retrieval_beam_weight":
        return getattr(model, "retrieval", None), "beam_weight"
    return model, key


def apply_variant(model, config, settings):
    """Sets each key on the model (and the config the evaluator reads), checking its value;
    ``exclude_seen`` is every model's (the trainer's history mask)."""
    from recbole_semprune.model.rec2pm import MEMORY_MODES

    for key in settings:
        if key != "exclude_seen" and not hasattr(*holder(model, key)):
            raise VariantError(f"{type(model).__name__} has no {key!r}")
    if settings.get("memory_mode", MEMORY_MODES[0]) not in MEMORY_MODES:
        raise VariantError(f"memory_mode must be one of {', '.join(MEMORY_MODES)}")
    if settings.get("retrieval_beam_weight", 0.0) < 0:
        raise VariantError("retrieval_beam_weight must be >= 0")
    if settings.get("beam_size", max(topk_list(config))) < max(topk_list(config)):
        raise VariantError(f"beam_size must be >= the largest topk ({max(topk_list(config))})")
    for key, value in settings.items():
        if key == "exclude_seen":
            set_exclude_seen(model, config, value)
        else:
            setattr(*holder(model, key), value)
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


def evaluate_variants(loaded, variants, split="test", length_groups=None):
    """``[(variant text, seconds, metrics, rows by length or None)]``, one per variant, of a
    checkpoint ``loaded`` by :func:`load`."""
    parsed = [(text, parse_variant(text)) for text in variants]
    bounds = parse_groups(length_groups) if length_groups else None
    config, model, _, valid, test = loaded
    data = valid if split == "valid" else test
    saved = {key: getattr(*holder(model, key)) for key in INFERENCE_KEYS
             if hasattr(*holder(model, key))}
    saved["exclude_seen"] = read_exclude_seen(config)  # every model's, in its config
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    rows = []
    for text, settings in parsed:
        apply_variant(model, config, {**saved, **settings})
        start = time.perf_counter()
        with torch.no_grad():
            result = trainer.evaluate(data, load_best_model=False, show_progress=False)
            seconds = time.perf_counter() - start
        groups = bounds and metrics_by_group(*rank_targets(model, config, data)[:2], bounds,
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


def load(model_file, sid_model=False):
    """``(config, model in eval mode, dataset, valid loader, test loader)`` of a checkpoint;
    with ``sid_model``, a checkpoint of another model is refused before its data is built."""
    from recbole_semprune.compat import load_checkpoint as read_checkpoint
    from recbole_semprune.quick_start import load_data_and_model
    from recbole_semprune.utils import get_model, is_sid_model

    if sid_model:  # the model's name, read before the dataset is built
        name = read_checkpoint(model_file, map_location="cpu", mmap=True)["config"]["model"]
        if not is_sid_model(get_model(name)):
            raise VariantError(f"--code_ranks needs a SID model; {model_file} holds a {name}")
    config, model, dataset, _, valid, test = load_data_and_model(model_file)
    return config, model.eval(), dataset, valid, test


def code_rank_table(loaded, split="test"):
    """Markdown: per group of targets by their count in training (five of about equal users),
    the share whose code at each level ranks first given the target's own prefix, and the
    median rank (:func:`~recbole_semprune.analysis.code_ranks`), of a SID checkpoint
    ``loaded`` by :func:`load`."""
    _, model, dataset, valid, test = loaded
    ranks, targets = code_ranks(model, valid if split == "valid" else test)
    counts = training_counts(dataset, valid, test)[targets]
    group, names = groups_of(counts, equal_groups(counts), lowest=0)
    rows = [(name, ranks[group == number]) for number, name in enumerate(names)
            if (group == number).any()] + [("all", ranks)]
    levels = range(ranks.shape[1])
    return markdown_table(
        ["target count", "users", *(f"level {l} first" for l in levels),
         *(f"level {l} median rank" for l in levels)], rows,
        lambda r: [r[0], f"{len(r[1]):,}", *(f"{100 * float((r[1][:, l] == 0).float().mean()):.1f}%"
                                              for l in levels),
                   *(str(int(r[1][:, l].median())) for l in levels)], text=["target count"])


def ranked_users(model_file, split, exclude_seen):
    """``(model name, topk, positions [N], user ids [N])`` of one checkpoint, rows by user id."""
    config, model, data = load_checkpoint(model_file, split)
    position, _, users = rank_targets(model, config, data, exclude_seen)
    order = torch.argsort(users)
    return config["model"], topk_list(config), position[order], users[order]


def compare_runs(pairs, split="test", exclude_seen=None):
    """``(name A, name B, users, rows)`` per ``(file A, file B)`` pair, rows ``(metric, A, B,
    A - B, standard error)``; then, for several pairs, the pooled one: A and B averaged over the
    runs, each user's difference over the pairs."""
    runs = [[ranked_users(f, split, exclude_seen) for f in pair] for pair in pairs]
    users = runs[0][0][3]
    for path, run in zip(sum(map(list, pairs), []), sum(runs, [])):
        if not torch.equal(run[3], users):
            raise CompareError(f"the {split} rows of {path} are not the same users as those of "
                               f"{pairs[0][0]} ({len(run[3])} vs {len(users)} rows): same dataset "
                               "and eval_args needed")
    topks = [side[1] for run in runs for side in run]
    topk = [k for k in topks[0] if all(k in other for other in topks)]
    if not topk:
        raise CompareError(f"no common topk: {' vs '.join(map(str, topks))}")
    metrics = [[per_user_metrics(side[2], topk) for side in run] for run in runs]
    groups = [[i] for i in range(len(runs))] + ([list(range(len(runs)))] if len(runs) > 1 else [])
    results = []
    for group in groups:
        names = ["/".join(dict.fromkeys(runs[i][side][0] for i in group)) for side in (0, 1)]
        names = [f"{name} ({len(group)} runs)" if len(group) > 1 else name for name in names]
        results.append((*names, len(users), pooled_difference([metrics[i] for i in group])))
    return results


def main(argv=None):
    parser = checkpoint_parser(__doc__)
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                        help="a checkpoint of a plugin run; with --compare: A B [A2 B2 ...]")
    parser.add_argument("--compare", action="store_true", help="paired per-user comparison of "
                        "checkpoints A, B of the same dataset and protocol; more pairs pool")
    parser.add_argument("--variants", default="", help="';'-separated KEY=VALUE[,KEY=VALUE] sets")
    parser.add_argument("--output", default=None, help="also write the table to this file")
    parser.add_argument("--length_groups", default=None, help="history lengths, e.g. 50,200")
    parser.add_argument("--code_ranks", action="store_true", help="SID models: where generation "
                        "goes wrong, level by level, by the target's count in training")
    args = parse_checkpoint_args(parser, argv, "checkpoints")
    files = args.checkpoints
    if not args.compare and (len(files) != 1 or args.exclude_seen is not None):
        parser.error("one checkpoint (--exclude_seen is a variant here), or --compare A B ...")
    if args.compare and (len(files) % 2 or args.variants or args.length_groups or args.output
                         or args.code_ranks):
        parser.error(f"--compare takes checkpoints in pairs A B (got {len(files)}) and no "
                     "--variants, --length_groups, --code_ranks or --output")
    try:
        if not args.compare:
            for text in args.variants.split(";"):  # bad settings fail before any loading
                parse_variant(text)
            if args.length_groups:
                parse_groups(args.length_groups)
            loaded = load(files[0], sid_model=args.code_ranks)  # one load serves both
            ranks = code_rank_table(loaded, args.split) if args.code_ranks else None
            rows = evaluate_variants(loaded, args.variants.split(";"), args.split,
                                     args.length_groups)
        else:
            pairs = list(zip(files[::2], files[1::2]))
            results = compare_runs(pairs, args.split, args.exclude_seen)
    except (VariantError, CompareError) as error:
        parser.error(str(error))
    if not args.compare:
        text = markdown(rows) + (f"\n\n{ranks}" if ranks else "")
        print(text)
        if args.output:
            with open(args.output, "w") as handle:
                handle.write(text + "\n")
        return rows
    for i, (name_a, name_b, users, rows) in enumerate(results):
        if len(results) > 1:
            print(f"\n## pair {i + 1}: {' vs '.join(pairs[i])}\n" if i < len(pairs)
                  else "\n## pooled\n")
        print(f"A = {name_a}, B = {name_b}, {users} users\n\n" + markdown_table(
            ["metric", "A", "B", "A - B", "standard error", "(A - B) / SE"], rows,
            lambda row: [row[0], *difference_cells(*row[1:])], text=["metric"]))
    return results[-1]


if __name__ == "__main__":
    main()
