"""Probe: does torch.compile make a TIGER training step cheaper on this CPU? TIGER at
size_preset cpu (with its dropout), amazon-beauty, content-only codes, one thread, the same
40 training batches; CPU seconds of this process. Run from the project root, eager then
compiled, each in its own process:

    .venv/bin/python results/benchmarks/compile-cpu-probe/compile_probe.py eager
    .venv/bin/python results/benchmarks/compile-cpu-probe/compile_probe.py compile

compile: torch.compile(model.calculate_loss, dynamic=True) (padding-free batches change shape
from batch to batch). The first 10 steps include compiling; the 30 after are timed.
sid_cache_dir: any folder (the codes are rebuilt if absent).
"""
import sys, time, torch
mode = sys.argv[1]
sys.argv = sys.argv[:1]
from recbole_semprune.config import Config
from recbole_semprune.quick_start import _build
torch.set_num_threads(1)
cfg = Config(model="TIGER", dataset="amazon-beauty", config_dict=dict(
    data_path="../shared/datasets", size_preset="cpu", sid_collaborative_weight=0.0,
    sid_cache_dir="saved/sid_cache", show_progress=False))
ds, tr, va, te, model, trainer = _build(cfg)
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
it = iter(tr)
batches = [next(it) for _ in range(40)]
loss_fn = model.calculate_loss
if mode == "compile":
    loss_fn = torch.compile(model.calculate_loss, dynamic=True)
def step(b):
    opt.zero_grad()
    loss = loss_fn(b)
    loss.backward(); opt.step()
t = time.process_time()
for b in batches[:10]: step(b)
print(mode, "first 10 steps (incl. compile) CPU s %.1f" % (time.process_time() - t), flush=True)
t = time.process_time()
for b in batches[10:40]: step(b)
print(mode, "s/step %.3f" % ((time.process_time() - t) / 30), flush=True)
