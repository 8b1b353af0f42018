"""Probe: can a dense item-scoring path beside a trained TIGER's beam reach the rare targets the
beam misses? Scores: the beam's, a dense score of every item (a linear map of the decoder's BOS
state against item vectors, full softmax over all items on the training rows), and a hybrid
(the dense log-softmax + a weight x the beam's log-probability; the weight chosen on validation).

    .venv/bin/python results/amazon-beauty/probes/dense_probe.py \\
        results/amazon-beauty/TIGER/seed-2020/saved/TIGER-<time>.pth 4      # frozen TIGER
    .venv/bin/python results/amazon-beauty/probes/dense_probe.py \\
        results/amazon-beauty/TIGER/seed-2020/saved/TIGER-<time>.pth 2 --joint=0,1

Frozen (default): the checkpoint stays fixed and only the dense heads train, ``EPOCHS`` epochs
each. Item vectors: "codes" = the sum of one vector per (level, code) of the item's semantic ID
(no per-item parameter), initialised from TIGER's own code unembeddings; "ids" = one free vector
per item (the per-item table SASRec has), for reference. ``--joint=L1,L2``: from the checkpoint,
TIGER and the "codes" head train together for ``EPOCHS`` epochs with the loss TIGER's + L x the
dense one (TIGER's optimiser settings; L = 0 is the control: TIGER trained on).
"""
import copy
import sys
import time

import torch
import torch.nn.functional as F

sys.argv, args = sys.argv[:1], sys.argv[1:]
from recbole_semprune.analysis import metrics_by_group, per_user_metrics, training_counts  # noqa: E402
from recbole_semprune.quick_start import load_data_and_model  # noqa: E402

torch.set_num_threads(1)
torch.manual_seed(0)
config, model, dataset, train, valid, test = load_data_and_model(args[0], device="cpu")
model.eval()
model.exclude_seen = False  # the protocol's mask: off
epochs = int(args[1]) if len(args) > 1 else 4
joint = [float(v) for v in args[2].split("=", 1)[1].split(",")] if len(args) > 2 else None
counts = training_counts(dataset, valid, test)
codes = model.codes.clamp(min=0) + model.level_offsets  # each item's rows of output.weight


def bos_state(batch):
    """(decoder hidden states [B, L, d] by teacher forcing, target tokens, targets)."""
    inter = batch[0] if isinstance(batch, tuple) else batch
    target = inter[model.POS_ITEM_ID]
    tokens = model.item_tokens(target)
    return model.target_hidden(*model.history(inter), tokens), tokens, target, inter


@torch.no_grad()
def states(loader, beams=False):
    hs, ts, bi, bs = [], [], [], []
    for batch in loader:
        hidden, _, target, inter = bos_state(batch)
        hs.append(hidden[:, 0])
        ts.append(target)
        if beams:
            items, scores = model.generate(*model.history(inter))
            bi.append(items)
            bs.append(scores)
    return [torch.cat(x) for x in ([hs, ts, bi, bs] if beams else [hs, ts])]


class Head(torch.nn.Module):
    def __init__(self, kind):
        super().__init__()
        d = model.hidden_size
        self.map = torch.nn.Linear(d, d, bias=False)
        torch.nn.init.eye_(self.map.weight)
        self.kind = kind
        if kind == "codes":
            self.code_vectors = torch.nn.Parameter(model.output.weight.detach().clone())
        else:
            self.item_vectors = torch.nn.Parameter(0.02 * torch.randn(model.n_items, d))

    def forward(self, h):
        items = self.code_vectors[codes].sum(1) if self.kind == "codes" else self.item_vectors
        scores = self.map(h) @ items.t()
        scores[:, 0] = float("-inf")  # the padding item
        return scores


def positions(scores, target):
    return (scores > scores.gather(1, target[:, None])).sum(1)


def beam_positions(items, target, k=20):
    hit = items == target[:, None]
    return torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(target, k))


def hybrid_scores(dense, items, gen, weight):
    """The dense log-softmax + weight x the beam's log-probability (items off the beam get the
    lowest log-probability of their user's beam)."""
    full = gen.min(1, keepdim=True).values.expand(-1, dense.shape[1]).clone()
    full.scatter_(1, items, gen)
    return dense.log_softmax(1) + weight * full


def ndcg(pos):
    return float(per_user_metrics(pos, [10])["ndcg@10"].mean())


def row(name, pos, target):
    groups = metrics_by_group(pos, counts[target], [4, 8, 17, 41], [10], lowest=0)
    print(f"| {name} | {ndcg(pos):.4f} | "
          + " | ".join(f"{g[2]['ndcg@10']:.4f}" for g in groups) + " |", flush=True)


@torch.no_grad()
def dense_of(head, h):
    return torch.cat([head(h[i:i + 2048]) for i in range(0, len(h), 2048)])


def tables(heads, tag):
    """Validation rows for every head and hybrid weight, then test rows at the chosen weights."""
    h_valid, t_valid, bi_valid, bs_valid = states(valid, True)
    h_test, t_test, bi_test, bs_test = states(test, True)
    header = " | NDCG@10 | 0-3 | 4-7 | 8-16 | 17-40 | >=41 |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    print(f"\n| {tag}: scores (valid){header}")
    row("TIGER beam", beam_positions(bi_valid, t_valid), t_valid)
    chosen = {}
    for kind, head in heads.items():
        dense = dense_of(head, h_valid)
        row(f"dense ({kind})", positions(dense, t_valid), t_valid)
        for weight in (0.25, 0.5, 1.0, 2.0):
            pos = positions(hybrid_scores(dense, bi_valid, bs_valid, weight), t_valid)
            row(f"hybrid ({kind}), weight {weight}", pos, t_valid)
            if ndcg(pos) > chosen.get(kind, (None, -1.0))[1]:
                chosen[kind] = (weight, ndcg(pos))
    print(f"\n| {tag}: scores (test; hybrid weight chosen on valid){header}")
    row("TIGER beam", beam_positions(bi_test, t_test), t_test)
    for kind, head in heads.items():
        dense = dense_of(head, h_test)
        row(f"dense ({kind})", positions(dense, t_test), t_test)
        weight = chosen[kind][0]
        row(f"hybrid ({kind}), weight {weight}",
            positions(hybrid_scores(dense, bi_test, bs_test, weight), t_test), t_test)


def frozen():
    begin = time.process_time()
    h_train, t_train = states(train)
    h_valid, t_valid = states(valid)
    print(f"states: {len(t_train)} train rows, {len(t_valid)} valid users, "
          f"{time.process_time() - begin:.0f} CPU s")
    heads = {}
    for kind in ("codes", "ids"):
        head = heads[kind] = Head(kind)
        opt = torch.optim.Adam(head.parameters(), lr=1e-3)
        for epoch in range(epochs):
            order, begin, total = torch.randperm(len(t_train)), time.process_time(), 0.0
            for i in range(0, len(order), 1024):
                rows = order[i:i + 1024]
                loss = F.cross_entropy(head(h_train[rows]), t_train[rows])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(rows)
            print(f"{kind} epoch {epoch}: loss {total / len(order):.3f}, valid NDCG@10 "
                  f"{ndcg(positions(dense_of(head, h_valid), t_valid)):.4f} "
                  f"({time.process_time() - begin:.0f} CPU s)", flush=True)
    tables(heads, "frozen TIGER")


def joint_training(weights):
    saved = copy.deepcopy(model.state_dict())
    for weight in weights:
        model.load_state_dict(saved)
        torch.manual_seed(0)
        head = Head("codes")
        opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()),
                                lr=config["learning_rate"], weight_decay=config["weight_decay"])
        for epoch in range(epochs):
            model.train()
            begin, totals, n = time.process_time(), [0.0, 0.0], 0
            for batch in train:
                hidden, tokens, target, _ = bos_state(batch)
                generative = -model.output.token_log_probs(hidden, tokens).mean()
                dense = F.cross_entropy(head(hidden[:, 0]), target)
                opt.zero_grad()
                (generative + weight * dense).backward()
                opt.step()
                totals[0] += float(generative.detach())
                totals[1] += float(dense.detach())
                n += 1
            print(f"joint weight {weight} epoch {epoch}: TIGER loss {totals[0] / n:.4f}, dense "
                  f"loss {totals[1] / n:.3f} ({time.process_time() - begin:.0f} CPU s)", flush=True)
        model.eval()
        tables({"codes": head}, f"joint, dense weight {weight}, {epochs} epochs")


if joint is None:
    frozen()
else:
    joint_training(joint)
