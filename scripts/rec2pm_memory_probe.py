#!/usr/bin/env python
"""Does a trained Rec2PM's memory carry information about its user? A probe of a checkpoint.

    python scripts/rec2pm_memory_probe.py saved/Rec2PM-....pth --threads=2

Folds each test user's history into its state as in evaluation, permutes the memories among the
users with a folded segment (their recent items stay) and ranks again; also gives the memory
spread (variance across users / mean square). Overwrite mode only. See README.md.
"""

import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_semprune.analysis import load_checkpoint, per_user_metrics, positions_of  # noqa: E402
from recbole_semprune.benchmark.common import checkpoint_parser, parse_checkpoint_args  # noqa: E402
from recbole_semprune.benchmark.report import markdown_table  # noqa: E402
from recbole_semprune.model.rec2pm import Rec2PM, Rec2PMState  # noqa: E402


class ProbeError(ValueError):
    """The checkpoint is not a Rec2PM one the probe can read."""


def collect(model, data):
    """``(state of every user, their histories [N, n], their target items [N])``."""
    states, histories, targets = [], [], []
    for batch in data:
        interaction = batch[0].to(model.codes.device)
        seq, seq_len = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
        states.append(model.init_state(seq, seq_len))
        histories.append(seq)
        targets.append(interaction[model.POS_ITEM_ID])
    state = Rec2PMState(*(torch.cat(field) for field in zip(*states)))
    return state, torch.cat(histories), torch.cat(targets)


def rank_metrics(model, state, histories, targets, k, exclude_seen, batch_size):
    """Per user: ``(recall@k [N], ndcg@k [N])`` of its single target, by ``model.recommend``."""
    positions = []
    for start in range(0, len(targets), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(targets)), device=targets.device)
        exclude = histories[rows] if exclude_seen else None
        items, _ = model.recommend(state.index_select(rows), k=k, exclude=exclude)
        positions.append(positions_of(items, targets[rows]))
    metrics = per_user_metrics(torch.cat(positions).cpu(), [k])
    return metrics[f"recall@{k}"], metrics[f"ndcg@{k}"]


def permute_memories(state, seed=0):
    """``(state, folded)``: the memories of the users with a folded segment (``folded``, their
    row numbers) permuted among them by a seeded permutation; the other users unchanged."""
    folded = (state.n_segments > 0).nonzero().squeeze(1)
    if len(folded) < 2:
        raise ProbeError(f"{len(folded)} users have a folded segment: nothing to permute")
    generator = torch.Generator().manual_seed(seed)
    order = folded[torch.randperm(len(folded), generator=generator).to(folded.device)]
    memory = state.memory.clone()
    memory[folded] = state.memory[order]
    return state._replace(memory=memory), folded


def probe(model_file, split="test", k=10, exclude_seen=None, seed=0):
    """Rows ``(users, n, memory spread, recall own, ndcg own, recall permuted, ndcg permuted)``
    for all users and for those with a folded segment (the permuted ones)."""
    config, model, data = load_checkpoint(model_file, split)
    if not isinstance(model, Rec2PM):
        raise ProbeError(f"{model_file} holds a {type(model).__name__}, not a Rec2PM")
    if model.memory_mode != "overwrite":
        raise ProbeError("the probe permutes one C x d memory per user: memory_mode must be overwrite")
    if exclude_seen is None:
        exclude_seen = model.exclude_seen
    batch_size = config["eval_batch_size"]
    with torch.no_grad():
        state, histories, targets = collect(model, data)
        own = rank_metrics(model, state, histories, targets, k, exclude_seen, batch_size)
        shuffled, folded = permute_memories(state, seed)
        permuted = rank_metrics(model, shuffled, histories, targets, k, exclude_seen, batch_size)
    memory = state.memory[folded]  # the spread: variance across users over the mean square
    spread = float(memory.var(0, unbiased=False).mean() / memory.pow(2).mean().clamp(min=1e-12))
    rows = []
    folded = folded.cpu()
    for name, index in (("all", torch.arange(len(targets))), ("with a folded segment", folded)):
        values = [float(metric[index].mean()) for metric in (*own, *permuted)]
        rows.append((name, len(index), spread if name != "all" else math.nan, *values))
    return rows, exclude_seen


def markdown(rows, k, exclude_seen):
    names = ["users", "n", "memory spread", f"Recall@{k} own", f"NDCG@{k} own",
             f"Recall@{k} permuted", f"NDCG@{k} permuted"]
    return f"exclude_seen={exclude_seen}\n\n" + markdown_table(names, rows, lambda row: [
        row[0], str(row[1]), "" if math.isnan(row[2]) else f"{row[2]:.4f}",
        *(f"{v:.4f}" for v in row[3:])], text=["users"])


def main(argv=None):
    parser = checkpoint_parser(__doc__)
    parser.add_argument("model_file", help="a Rec2PM checkpoint written by a plugin run")
    parser.add_argument("--k", type=int, default=10, help="cut-off of Recall / NDCG")
    parser.add_argument("--seed", type=int, default=0, help="seed of the permutation")
    args = parse_checkpoint_args(parser, argv, "model_file")
    try:
        rows, exclude = probe(args.model_file, args.split, args.k, args.exclude_seen, args.seed)
    except ProbeError as error:
        parser.error(str(error))
    print(markdown(rows, args.k, exclude))
    return rows


if __name__ == "__main__":
    main()
