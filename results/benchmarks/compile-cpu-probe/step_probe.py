"""Probes of a SID model's training step at size_preset cpu (with its dropout), amazon-beauty,
content-only codes, one thread, CPU seconds of this process. Run from the project root, each in
its own process; sid_cache_dir is any folder (the codes are rebuilt if absent).

Does torch.compile make TIGER's step cheaper (output compile_probe.out)? The same 40 training
batches, eager then compiled with torch.compile(model.calculate_loss, dynamic=True) (padding-free
batches change shape from batch to batch); the first 10 steps include compiling, the 30 after
are timed:

    .venv/bin/python results/benchmarks/compile-cpu-probe/step_probe.py eager
    .venv/bin/python results/benchmarks/compile-cpu-probe/step_probe.py compile

Where a step's CPU time goes (outputs profile_<model>.out; they were run with `nice`, under load
from two training runs: read the shares, not the times): torch.profiler over N steps after N
timed ones:

    .venv/bin/python results/benchmarks/compile-cpu-probe/step_probe.py profile TIGER 10
    .venv/bin/python results/benchmarks/compile-cpu-probe/step_probe.py profile DecoderOnlySID 4
"""
import sys
import time

import torch

mode, args = sys.argv[1], sys.argv[2:]
sys.argv = sys.argv[:1]
from recbole_semprune.config import Config  # noqa: E402
from recbole_semprune.quick_start import _build  # noqa: E402

model_name, n = (args[0], int(args[1])) if mode == "profile" else ("TIGER", 10)
torch.set_num_threads(1)
cfg = Config(model=model_name, dataset="amazon-beauty", config_dict=dict(
    data_path="../shared/datasets", size_preset="cpu", sid_collaborative_weight=0.0,
    sid_cache_dir="saved/sid_cache", show_progress=False))
ds, tr, va, te, model, trainer = _build(cfg)
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
it = iter(tr)
loss_fn = torch.compile(model.calculate_loss, dynamic=True) if mode == "compile" else \
    model.calculate_loss


def step(b):
    opt.zero_grad()
    loss = loss_fn(b)
    loss.backward()
    opt.step()


def timed(batches):
    """CPU seconds per step over ``batches``."""
    t = time.process_time()
    for b in batches:
        step(b)
    return (time.process_time() - t) / len(batches)


if mode in ("eager", "compile"):
    batches = [next(it) for _ in range(40)]
    t = time.process_time()
    for b in batches[:10]:
        step(b)
    print(mode, "first 10 steps (incl. compile) CPU s %.1f" % (time.process_time() - t), flush=True)
    print(mode, "s/step %.3f" % timed(batches[10:40]), flush=True)
else:
    from torch.profiler import ProfilerActivity, profile

    batches = [next(it) for _ in range(4 + 2 * n)]
    for b in batches[:4]:
        step(b)
    print("s/step %.3f" % timed(batches[4:4 + n]))
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for b in batches[4 + n:]:
            step(b)
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
