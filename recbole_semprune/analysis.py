"""Per-user ranking figures of a trained sequential model, for analyses RecBole's evaluator does
not give: metrics by history length or by the target's count in training, where a SID model's
generation goes wrong (:func:`code_ranks`), and paired differences between two models on the
same users (``scripts/evaluate_checkpoint.py``, ``scripts/rec2pm_memory_probe.py``, results
mode).

Every evaluation row of a sequential RecBole dataset has one target item, so a user's Recall@k
is 1 if the target is in its top k and its NDCG@k is ``1 / log2(position + 2)`` then (position
0 = first), 0 otherwise: the figures RecBole's evaluator averages.
"""

import math

import torch


def topk_list(config):
    """The config's ``topk`` (an int or a list) as a list."""
    topk = config["topk"]
    return [topk] if isinstance(topk, int) else list(topk)


def set_exclude_seen(model, config, value):
    """Sets the history mask ``exclude_seen`` of a loaded checkpoint: the protocol key its
    trainer reads and, for a SID model, its beam search's."""
    config["exclude_seen"] = value
    if hasattr(model, "exclude_seen"):
        model.exclude_seen = value


def load_checkpoint(model_file, split="test"):
    """``(config, model, data)`` of a saved checkpoint: the model in eval mode, ``data`` the
    loader of its ``split`` ("test" or "valid")."""
    from recbole_semprune.quick_start import load_data_and_model

    config, model, _, _, valid_data, test_data = load_data_and_model(model_file)
    return config, model.eval(), valid_data if split == "valid" else test_data


def rank_targets(model, config, data, exclude_seen=None):
    """:func:`target_positions` of ``data`` over the config's largest ``topk``, with the history
    mask ``exclude_seen`` set first (None: the config's own), without gradients."""
    from recbole_semprune.trainer import exclude_seen as read_exclude_seen

    if exclude_seen is not None:
        set_exclude_seen(model, config, exclude_seen)
    with torch.no_grad():
        return target_positions(model.eval(), data, max(topk_list(config)),
                                read_exclude_seen(config))


def target_positions(model, data, kmax, exclude_seen=False):
    """Ranks every row of ``data`` (a full-sort eval loader) by ``model.full_sort_predict``, as
    RecBole's evaluator does (padding item last; with ``exclude_seen``, the history items too,
    as the plugin trainer does). Returns ``(position, history_length, user_id)``, three ``[N]``
    CPU tensors in the loader's order; ``position`` is the target's place in the top ``kmax``
    (0 = first), ``kmax`` when it is not there."""
    from recbole_semprune.trainer import mask_history

    positions, lengths, users = [], [], []
    for batch in data:
        interaction = batch[0].to(model.device)
        scores = model.full_sort_predict(interaction).view(len(interaction), -1)
        scores[:, 0] = float("-inf")
        if exclude_seen:
            mask_history(scores, interaction, model)
        top = scores.topk(kmax, dim=1).indices
        positions.append(positions_of(top, interaction[model.POS_ITEM_ID]))
        lengths.append(interaction[model.ITEM_SEQ_LEN])
        users.append(interaction[model.USER_ID])
    return tuple(torch.cat(t).cpu() for t in (positions, lengths, users))


def positions_of(top, target):
    """Place of each row's ``target`` ``[N]`` in its list ``top`` ``[N, k]``; ``k`` if absent."""
    match = top == target.unsqueeze(1)
    absent = torch.full_like(target, top.shape[1])
    return torch.where(match.any(1), match.float().argmax(1).long(), absent)


def per_user_metrics(position, topk):
    """``{"recall@k": [N], "ndcg@k": [N]}`` float tensors for each ``k`` of ``topk``."""
    rank = position.float()
    values = {}
    for k in topk:
        hit = (rank < k).float()
        values[f"recall@{k}"] = hit
        values[f"ndcg@{k}"] = hit / torch.log2(rank + 2)
    return values


def groups_of(values, bounds, lowest=1):
    """``(group number of each value [N], group names)``: ``lowest``-``bounds[0] - 1``, ...,
    ``>= bounds[-1]``."""
    group = torch.bucketize(values, torch.tensor(bounds, dtype=values.dtype), right=True)
    names = [f"{lo}-{hi - 1}" for lo, hi in zip([lowest, *bounds], bounds)] + [
        f">={bounds[-1] if bounds else lowest}"]
    return group, names


def metrics_by_group(position, values, bounds, topk, lowest=1):
    """``[(group name, users, {"recall@k": .., "ndcg@k": ..})]`` of the users' target
    positions ``[N]`` grouped by a per-user value ``[N]`` (history length, the target's count
    in training ...), groups as :func:`groups_of` makes them."""
    group, names = groups_of(values, bounds, lowest)
    rows = []
    for number, name in enumerate(names):
        users = int((group == number).sum())
        values = per_user_metrics(position[group == number], topk)
        rows.append((name, users, {m: float(v.mean()) if users else float("nan")
                                   for m, v in values.items()}))
    return rows


def training_counts(dataset, *eval_data):
    """LongTensor ``[n_items]``: how often each item occurs in the training interactions. A
    sequential RecBole ``dataset`` (before its split) holds one row per interaction but each
    user's first, whose target is that interaction and whose row of length 1 has the first in
    its history; the targets of the evaluation loaders ``eval_data`` are held out of training."""
    feat, field, n = dataset.inter_feat, dataset.iid_field, dataset.item_num
    history = feat[getattr(dataset, f"{field}_list_field")]
    firsts = history[:, 0][feat[dataset.item_list_length_field] == 1]
    counts = torch.bincount(torch.cat([feat[field], firsts]), minlength=n)
    for data in eval_data:
        counts -= torch.bincount(data._dataset.inter_feat[field], minlength=n)
    return counts


def equal_groups(values, groups=5):
    """Increasing integer bounds that split ``values`` ``[N]`` into about ``groups`` groups of
    equal size (fewer where values repeat), for :func:`metrics_by_group`."""
    levels = torch.arange(1, groups, dtype=torch.double) / groups
    quantiles = torch.quantile(values.double(), levels)
    return sorted({math.ceil(q) for q in quantiles.tolist()} - {math.ceil(values.min())})


def code_ranks(model, data):
    """``(ranks [N, L], targets [N])`` of a SID model over an evaluation loader: at each level,
    how many of the codes the trie allows after the target's own prefix the model scores above
    the target's code (0: first), by teacher forcing. Where generation goes wrong: a coarse
    level (the kind of item) or a fine one (which of similar items)."""
    ranks, targets = [], []
    with torch.no_grad():
        for batch in data:
            interaction = batch[0].to(model.device)
            target = interaction[model.POS_ITEM_ID]
            codes = model.codes[target]
            hidden = model.target_hidden(*model.history(interaction), model.item_tokens(target))
            levels = []
            for level in range(model.n_levels):
                scores = model.output.level_log_probs(hidden[:, level], level).masked_fill(
                    ~model.trie.allowed(level, codes[:, :level]), float("-inf"))
                levels.append((scores > scores.gather(1, codes[:, level:level + 1])).sum(1))
            ranks.append(torch.stack(levels, 1))
            targets.append(target)
    return torch.cat(ranks).cpu(), torch.cat(targets).cpu()


def paired_difference(a, b):
    """Mean of ``a - b`` over the same users (``[N]`` each) and its standard error."""
    if a.shape != b.shape:
        raise ValueError(f"paired figures need the same users: {tuple(a.shape)} vs {tuple(b.shape)}")
    diff = (a - b).double()
    n = len(diff)
    se = float(diff.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.nan
    return float(diff.mean()), se


def pooled_difference(pairs):
    """Rows ``(metric, A, B, A - B, standard error)`` of runs paired as ``[(metrics A, metrics B),
    ...]`` (one pair per seed, each a :func:`per_user_metrics` dict over the same users in the
    same order): each user's figure is averaged over the pairs first, so a user's results in
    several seeds are not counted as independent users."""
    rows = []
    for metric in pairs[0][0]:
        a = torch.stack([pair[0][metric] for pair in pairs]).mean(0)
        b = torch.stack([pair[1][metric] for pair in pairs]).mean(0)
        diff, se = paired_difference(a, b)
        rows.append((metric, float(a.mean()), float(b.mean()), diff, se))
    return rows


def difference_cells(a, b, diff, se):
    """Table cells of a paired comparison: A, B, A - B, its standard error, (A - B) / SE."""
    return [f"{a:.4f}", f"{b:.4f}", f"{diff:+.4f}", f"{se:.4f}", f"{diff / se:+.2f}" if se > 0 else "n/a"]
