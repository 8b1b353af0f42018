"""Paired per-user NDCG@10 / Recall@10 difference of two runs (seed 2020) of a results-mode folder,
from their positions.csv, with the pooling of the results tables (recbole_semprune.analysis).

    python results/pair_positions.py results/ml-100k/converged RASTPnodrop TIGERnodrop
"""
import sys, pandas as pd, torch
from recbole_semprune.analysis import per_user_metrics, pooled_difference
folder, a, b = sys.argv[1:4]
read = lambda m: pd.read_csv(f"{folder}/{m}/seed-2020/positions.csv", sep="\t").sort_values("user_id")
for mask in ("off", "on"):
    pa, pb = (torch.tensor(read(m)[f"position_{mask}"].values) for m in (a, b))
    for metric, x, y, d, se in pooled_difference([(per_user_metrics(pa, [10]), per_user_metrics(pb, [10]))]):
        print(f"{a} - {b}, mask {mask}, {metric}: {x:.4f} - {y:.4f} = {d:+.4f} +- {se:.4f}")
