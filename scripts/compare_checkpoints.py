#!/usr/bin/env python
"""Paired comparison of two checkpoints on the same evaluation users: is A above B?

Both checkpoints rank the rows of their test (or validation) split, which must be the same
users (same dataset and protocol); for each metric the table gives A's and B's figure (RecBole's
evaluator's), the mean per-user difference A - B, its standard error and their ratio::

    python scripts/compare_checkpoints.py saved/Rec2PM-....pth saved/DecoderOnlySID-....pth

Pairing removes what the users have in common (hard users are hard for both), so the standard
error of the difference is smaller than either model's own. ``--exclude_seen=True`` or
``False`` sets that decoding key on both SID models (default: each as saved).
"""

import argparse
import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from recbole_semprune.analysis import (  # noqa: E402
    paired_difference, per_user_metrics, target_positions, topk_list,
)
from recbole_semprune.quick_start import load_data_and_model  # noqa: E402


class CompareError(ValueError):
    """The two checkpoints cannot be compared user by user."""


def ranked_users(model_file, split, exclude_seen):
    """``(model name, topk, positions [N], user ids [N])`` of one checkpoint, rows by user id."""
    config, model, _, _, valid_data, test_data = load_data_and_model(model_file)
    if exclude_seen is not None:
        if not hasattr(model, "exclude_seen"):
            raise CompareError(f"{type(model).__name__} has no exclude_seen (SID models only)")
        model.exclude_seen = exclude_seen
    topk = topk_list(config)
    with torch.no_grad():
        position, _, users = target_positions(model.eval(), valid_data if split == "valid" else test_data, max(topk))
    order = torch.argsort(users)
    return config["model"], topk, position[order], users[order]


def compare(file_a, file_b, split="test", exclude_seen=None):
    """``(name A, name B, users, rows)``, rows ``(metric, A, B, A - B, standard error)``."""
    name_a, topk_a, position_a, users_a = ranked_users(file_a, split, exclude_seen)
    name_b, topk_b, position_b, users_b = ranked_users(file_b, split, exclude_seen)
    if not torch.equal(users_a, users_b):
        raise CompareError(
            f"the checkpoints' {split} rows are not the same users ({len(users_a)} vs {len(users_b)} "
            "rows): same dataset and eval_args needed"
        )
    topk = [k for k in topk_a if k in topk_b]
    if not topk:
        raise CompareError(f"no common topk: {topk_a} vs {topk_b}")
    metrics_a, metrics_b = per_user_metrics(position_a, topk), per_user_metrics(position_b, topk)
    rows = []
    for metric in metrics_a:
        diff, se = paired_difference(metrics_a[metric], metrics_b[metric])
        rows.append((metric, float(metrics_a[metric].mean()), float(metrics_b[metric].mean()), diff, se))
    return name_a, name_b, len(users_a), rows


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
    parser.add_argument("model_a", help="checkpoint A (saved/...pth)")
    parser.add_argument("model_b", help="checkpoint B, trained on the same dataset and protocol")
    parser.add_argument("--split", choices=["test", "valid"], default="test")
    parser.add_argument("--exclude_seen", choices=["True", "False"], default=None,
                        help="set exclude_seen on both models (default: as saved)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    for path in (args.model_a, args.model_b):
        if not os.path.isfile(path):
            parser.error(f"no checkpoint at {path}")
    if args.threads:
        torch.set_num_threads(args.threads)
    exclude = None if args.exclude_seen is None else args.exclude_seen == "True"
    try:
        result = compare(args.model_a, args.model_b, args.split, exclude)
    except CompareError as error:
        parser.error(str(error))
    print(markdown(*result))
    return result


if __name__ == "__main__":
    main()
