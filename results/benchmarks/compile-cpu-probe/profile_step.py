"""Where a training step's CPU time goes: torch.profiler over training steps of a SID model at
size_preset cpu (with its dropout), amazon-beauty, content-only codes, one thread. Run from the
project root (outputs beside this file were run with `nice`, under load from two training runs:
read the shares, not the times):

    .venv/bin/python results/benchmarks/compile-cpu-probe/profile_step.py TIGER 10
    .venv/bin/python results/benchmarks/compile-cpu-probe/profile_step.py DecoderOnlySID 4
"""
import sys, time, torch
model_name, n = sys.argv[1], int(sys.argv[2])
sys.argv = sys.argv[:1]
from recbole_semprune.config import Config
from recbole_semprune.quick_start import _build
torch.set_num_threads(1)
cfg = Config(model=model_name, dataset="amazon-beauty", config_dict=dict(
    data_path="../shared/datasets", size_preset="cpu", sid_collaborative_weight=0.0,
    sid_cache_dir="saved/sid_cache", show_progress=False))
ds, tr, va, te, model, trainer = _build(cfg)
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
it = iter(tr)
batches = [next(it) for _ in range(4 + 2 * n)]
def step(b):
    opt.zero_grad()
    loss = model.calculate_loss(b)
    loss.backward(); opt.step()
for b in batches[:4]: step(b)
t = time.process_time()
for b in batches[4:4 + n]: step(b)
print("s/step %.3f" % ((time.process_time() - t) / n))
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU]) as p:
    for b in batches[4 + n:]: step(b)
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
