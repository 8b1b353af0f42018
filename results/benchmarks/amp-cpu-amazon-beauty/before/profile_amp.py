"""TIGER (CPU preset, no dropout) steps in float32 against bf16 autocast, then a profile of the
autocast steps; run from the project root on the code before fused_attention (commit 20e047c).
Output: profile_amp.out. The sid_cache_dir is any folder (the codes are rebuilt if absent)."""
import sys, time, torch
sys.argv = sys.argv[:1]
from recbole_semprune.config import Config
from recbole_semprune.quick_start import _build
torch.set_num_threads(1)
cfg = Config(model="TIGER", dataset="amazon-beauty", config_dict=dict(
    data_path="../shared/datasets", size_preset="cpu", sid_collaborative_weight=0.0,
    hidden_dropout_prob=0.0, attn_dropout_prob=0.0,
    sid_cache_dir="results/amazon-beauty/TIGERnodrop/seed-2020/saved/sid_cache",
    show_progress=False))
ds, tr, va, te, model, trainer = _build(cfg)
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
it = iter(tr)
batches = [next(it) for _ in range(30)]
def step(b, amp):
    opt.zero_grad()
    with torch.autocast("cpu", enabled=amp):
        loss = model.calculate_loss(b)
    loss.backward(); opt.step()
for b in batches[:4]: step(b, False); step(b, True)
tot = {False: 0.0, True: 0.0}
for r in range(2):
  for amp in (False, True, True, False):
    t = time.process_time()
    for b in batches[4:17]: step(b, amp)
    tot[amp] += time.process_time() - t
print("fp32 %.3f s/step, bf16 autocast %.3f s/step, ratio %.2f" % (tot[False]/52, tot[True]/52, tot[True]/tot[False]))
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU]) as p:
    for b in batches[17:27]: step(b, True)
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
