"""Probe: does a dense item-scoring path on a trained TIGER's own decoder state reach the rare
targets its beam misses? The TIGER checkpoint stays frozen; only a linear map of the BOS decoder
state and the item vectors are trained, full softmax over all items, on the training rows.

    .venv/bin/python results/amazon-beauty/probes/dense_probe.py \
        results/amazon-beauty/TIGER/seed-2020/saved/TIGER-<time>.pth 4   # epochs of each head
Item vectors: "codes" = sum of one vector per (level, code) of the item's semantic ID (no
per-item parameter), initialised from TIGER's own code unembeddings; "ids" = one free vector
per item (the per-item table SASRec has), for reference.
"""
import sys, time
import torch, torch.nn.functional as F
sys.argv, args = sys.argv[:1], sys.argv[1:]
from recbole_semprune.quick_start import load_data_and_model
from recbole_semprune.analysis import training_counts, per_user_metrics, metrics_by_group

torch.set_num_threads(1); torch.manual_seed(0)
config, model, dataset, train, valid, test = load_data_and_model(args[0], device="cpu")
model.eval(); model.exclude_seen = False
epochs = int(args[1]) if len(args) > 1 else 4
n_items = model.n_items

@torch.no_grad()
def states(loader, beams=False):
    hs, ts, bi, bs = [], [], [], []
    for batch in loader:
        inter = batch[0] if isinstance(batch, tuple) else batch
        seq, length = model.history(inter)
        target = inter[model.POS_ITEM_ID]
        hs.append(model.target_hidden(seq, length, model.item_tokens(target))[:, 0])
        ts.append(target)
        if beams:
            items, scores = model.generate(seq, length)
            bi.append(items); bs.append(scores)
    out = [torch.cat(hs), torch.cat(ts)]
    return out + ([torch.cat(bi), torch.cat(bs)] if beams else [])

begin = time.process_time()
h_train, t_train = states(train)
h_valid, t_valid, bi_valid, bs_valid = states(valid, True)
h_test, t_test, bi_test, bs_test = states(test, True)
print(f"states: {len(t_train)} train rows, {len(t_valid)} valid, {len(t_test)} test users, "
      f"{time.process_time() - begin:.0f} CPU s")
counts = training_counts(dataset, valid, test)
codes = model.codes.clamp(min=0) + model.level_offsets  # [n_items, L] rows of output.weight

class Head(torch.nn.Module):
    def __init__(self, kind):
        super().__init__()
        d = h_train.shape[1]
        self.map = torch.nn.Linear(d, d, bias=False)
        torch.nn.init.eye_(self.map.weight)
        self.kind = kind
        if kind == "codes":
            self.code_vectors = torch.nn.Parameter(model.output.weight.detach().clone())
        else:
            self.item_vectors = torch.nn.Parameter(0.02 * torch.randn(n_items, d))
    def forward(self, h):
        items = (self.code_vectors[codes].sum(1) if self.kind == "codes" else self.item_vectors)
        scores = self.map(h) @ items.t()
        scores[:, 0] = float("-inf")  # the padding item
        return scores

def positions(scores, target):
    return (scores > scores.gather(1, target[:, None])).sum(1)

def beam_positions(items, target, k=20):
    hit = items == target[:, None]
    return torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(target, k))

def hybrid_scores(dense, items, gen, weight):
    """log-softmax of the dense scores + weight x the beam's log-probability (items off the
    beam get the lowest log-probability of their user's beam)."""
    full = gen.min(1, keepdim=True).values.expand(-1, dense.shape[1]).clone()
    full.scatter_(1, items, gen)
    return dense.log_softmax(1) + weight * full

def ndcg(pos):
    return float(per_user_metrics(pos, [10])["ndcg@10"].mean())

def report(name, pos, target):
    groups = metrics_by_group(pos, counts[target], [4, 8, 17, 41], [10], lowest=0)
    print(f"| {name} | {ndcg(pos):.4f} | " + " | ".join(f"{g[2]['ndcg@10']:.4f}" for g in groups) + " |")
    return groups

@torch.no_grad()
def dense_of(head, h):
    return torch.cat([head(h[i:i + 2048]) for i in range(0, len(h), 2048)])

results = {}
for kind in ("codes", "ids"):
    head = Head(kind)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    for epoch in range(epochs):
        order = torch.randperm(len(t_train))
        begin, total = time.process_time(), 0.0
        for i in range(0, len(order), 1024):
            rows = order[i:i + 1024]
            loss = F.cross_entropy(head(h_train[rows]), t_train[rows])
            opt.zero_grad(); loss.backward(); opt.step(); total += float(loss) * len(rows)
        valid_pos = positions(dense_of(head, h_valid), t_valid)
        print(f"{kind} epoch {epoch}: loss {total / len(order):.3f}, valid NDCG@10 "
              f"{ndcg(valid_pos):.4f} ({time.process_time() - begin:.0f} CPU s)")
    results[kind] = head

print()
print("| scores (valid) | NDCG@10 | 0-3 | 4-7 | 8-16 | 17-40 | >=41 |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
report("TIGER beam", beam_positions(bi_valid, t_valid), t_valid)
best = {}
for kind, head in results.items():
    dense = dense_of(head, h_valid)
    report(f"dense ({kind})", positions(dense, t_valid), t_valid)
    for weight in (0.25, 0.5, 1.0, 2.0):
        pos = positions(hybrid_scores(dense, bi_valid, bs_valid, weight), t_valid)
        report(f"hybrid ({kind}), weight {weight}", pos, t_valid)
        if ndcg(pos) > best.get(kind, (None, -1))[1]:
            best[kind] = (weight, ndcg(pos))
print()
print("| scores (test; hybrid weight chosen on valid) | NDCG@10 | 0-3 | 4-7 | 8-16 | 17-40 | >=41 |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
report("TIGER beam", beam_positions(bi_test, t_test), t_test)
for kind, head in results.items():
    dense = dense_of(head, h_test)
    report(f"dense ({kind})", positions(dense, t_test), t_test)
    weight = best[kind][0]
    report(f"hybrid ({kind}), weight {weight}", positions(hybrid_scores(dense, bi_test, bs_test, weight), t_test), t_test)
