#!/usr/bin/env python
"""Paired comparison of two checkpoints on the same evaluation users: is A above B?

Both checkpoints rank the rows of their test (or validation) split, which must be the same
users (same dataset and protocol); for each metric the table gives A's and B's figure (RecBole's
evaluator's), the mean per-user difference A - B, its standard error and their ratio::

    python scripts/compare_checkpoints.py saved/Rec2PM-....pth saved/DecoderOnlySID-....pth

Pairing removes what the users have in common (hard users are hard for both), so the standard
error of the difference is smaller than either model's own. ``--exclude_seen=True`` or
``False`` sets the history mask of both models, any model (default: each as saved).

Several pairs of runs (seeds, say) pool into one figure: ``A1 B1 A2 B2 ...``. Each pair gets
its table, then the pooled one: A's and B's figures averaged over the runs, and each user's
difference averaged over the pairs, whose mean and standard error over the users are the
pooled A - B (so a user's results in different seeds are not counted as independent users).
"""

import argparse
import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from recbole_semprune.analysis import (  # noqa: E402
    per_user_metrics, pooled_difference, set_exclude_seen, target_positions, topk_list,
)
from recbole_semprune.quick_start import load_data_and_model  # noqa: E402
from recbole_semprune.trainer import exclude_seen as read_exclude_seen  # noqa: E402


class CompareError(ValueError):
    """The two checkpoints cannot be compared user by user."""


def ranked_users(model_file, split, exclude_seen):
    """``(model name, topk, positions [N], user ids [N])`` of one checkpoint, rows by user id."""
    config, model, _, _, valid_data, test_data = load_data_and_model(model_file)
    if exclude_seen is not None:
        set_exclude_seen(model, config, exclude_seen)
    topk = topk_list(config)
    data = valid_data if split == "valid" else test_data
    with torch.no_grad():
        position, _, users = target_positions(model.eval(), data, max(topk), read_exclude_seen(config))
    order = torch.argsort(users)
    return config["model"], topk, position[order], users[order]


def compare(file_a, file_b, split="test", exclude_seen=None):
    """``(name A, name B, users, rows)``, rows ``(metric, A, B, A - B, standard error)``."""
    return compare_runs([(file_a, file_b)], split, exclude_seen)[-1]


def compare_runs(pairs, split="test", exclude_seen=None):
    """One result of :func:`compare` per ``(file A, file B)`` pair, then, for several pairs,
    the pooled result: figures averaged over the runs, per-user differences over the pairs."""
    runs = [[ranked_users(f, split, exclude_seen) for f in pair] for pair in pairs]
    users = runs[0][0][3]
    for (file_a, file_b), run in zip(pairs, runs):
        for path, (_, _, _, run_users) in zip((file_a, file_b), run):
            if not torch.equal(run_users, users):
                raise CompareError(
                    f"the {split} rows of {path} are not the same users as those of {pairs[0][0]} "
                    f"({len(run_users)} vs {len(users)} rows): same dataset and eval_args needed"
                )
    topks = [run[side][1] for run in runs for side in (0, 1)]
    topk = [k for k in topks[0] if all(k in other for other in topks)]
    if not topk:
        raise CompareError(f"no common topk: {' vs '.join(map(str, topks))}")
    metrics = [[per_user_metrics(run[side][2], topk) for side in (0, 1)] for run in runs]
    results = [_result(runs[i:i + 1], metrics[i:i + 1], users) for i in range(len(runs))]
    if len(runs) > 1:
        results.append(_result(runs, metrics, users))
    return results


def _result(runs, metrics, users):
    """``(name A, name B, users, rows)`` of runs pooled as in the module doc."""
    names = ["/".join(dict.fromkeys(run[side][0] for run in runs)) for side in (0, 1)]
    if len(runs) > 1:
        names = [f"{name} ({len(runs)} runs)" for name in names]
    return names[0], names[1], len(users), pooled_difference(metrics)


def markdown(name_a, name_b, users, rows):
    lines = [
        f"A = {name_a}, B = {name_b}, {users} users",
        "",
        "| metric | A | B | A - B | standard error | (A - B) / SE |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for metric, a, b, diff, se in rows:
        ratio = f"{diff / se:+.2f}" if se > 0 else "n/a"
        lines.append(f"| {metric} | {a:.4f} | {b:.4f} | {diff:+.4f} | {se:.4f} | {ratio} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+", metavar="A B [A2 B2 ...]",
                        help="checkpoint A, then B trained on the same dataset and protocol; "
                             "more pairs (e.g. other seeds) are pooled")
    parser.add_argument("--split", choices=["test", "valid"], default="test")
    parser.add_argument("--exclude_seen", choices=["True", "False"], default=None,
                        help="set the history mask exclude_seen of both models (default: as saved)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if len(args.checkpoints) % 2:
        parser.error(f"checkpoints come in pairs A B, got {len(args.checkpoints)}")
    for path in args.checkpoints:
        if not os.path.isfile(path):
            parser.error(f"no checkpoint at {path}")
    if args.threads:
        torch.set_num_threads(args.threads)
    exclude = None if args.exclude_seen is None else args.exclude_seen == "True"
    pairs = list(zip(args.checkpoints[::2], args.checkpoints[1::2]))
    try:
        results = compare_runs(pairs, args.split, exclude)
    except CompareError as error:
        parser.error(str(error))
    for i, result in enumerate(results):
        if len(results) > 1:
            print(f"\n## pair {i + 1}: {' vs '.join(pairs[i])}\n" if i < len(pairs) else "\n## pooled\n")
        print(markdown(*result))
    return results[-1]


if __name__ == "__main__":
    main()
