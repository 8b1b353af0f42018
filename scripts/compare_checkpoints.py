#!/usr/bin/env python
"""Paired comparison of two checkpoints on the same evaluation users: is A above B?

    python scripts/compare_checkpoints.py A.pth B.pth [A2.pth B2.pth ...] [--exclude_seen=True]

Per metric: A, B, the mean per-user difference A - B, its standard error and their ratio;
several pairs (seeds) pool per user (README.md, docs/results.md).
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_semprune.analysis import (  # noqa: E402
    difference_cells, load_checkpoint, per_user_metrics, pooled_difference, rank_targets, topk_list,
)
from recbole_semprune.benchmark.common import checkpoint_parser, parse_checkpoint_args  # noqa: E402
from recbole_semprune.benchmark.report import markdown_table  # noqa: E402


class CompareError(ValueError):
    """The two checkpoints cannot be compared user by user."""


def ranked_users(model_file, split, exclude_seen):
    """``(model name, topk, positions [N], user ids [N])`` of one checkpoint, rows by user id."""
    config, model, data = load_checkpoint(model_file, split)
    position, _, users = rank_targets(model, config, data, exclude_seen)
    order = torch.argsort(users)
    return config["model"], topk_list(config), position[order], users[order]


def compare(file_a, file_b, split="test", exclude_seen=None):
    """``(name A, name B, users, rows)``, rows ``(metric, A, B, A - B, standard error)``."""
    return compare_runs([(file_a, file_b)], split, exclude_seen)[-1]


def compare_runs(pairs, split="test", exclude_seen=None):
    """One result of :func:`compare` per ``(file A, file B)`` pair, then, for several pairs,
    the pooled one: A and B averaged over the runs, each user's difference over the pairs."""
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
    parser = checkpoint_parser(__doc__, "checkpoints", nargs="+", metavar="A B [A2 B2 ...]",
                               help="checkpoints A, B of the same dataset and protocol; more "
                               "pairs pool")
    args = parse_checkpoint_args(parser, argv)
    if len(args.checkpoints) % 2:
        parser.error(f"checkpoints come in pairs A B, got {len(args.checkpoints)}")
    pairs = list(zip(args.checkpoints[::2], args.checkpoints[1::2]))
    try:
        results = compare_runs(pairs, args.split, args.exclude_seen)
    except CompareError as error:
        parser.error(str(error))
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
