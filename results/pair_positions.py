"""Paired per-user test NDCG@10 / Recall@10 difference of two labels of a results-mode folder
(seeds both ran), by the results mode's own pairing (``collect`` and ``paired_rows`` of
recbole_semprune.benchmark.results) with B as the baseline:

    python results/pair_positions.py results/ml-100k/converged RASTPnodrop TIGERnodrop
"""
import sys

from recbole_semprune.benchmark.results import collect, paired_rows

folder, a, b = sys.argv[1:4]
for row in paired_rows(collect(folder, [a, b]), b):
    print(f"{a} - {b}, mask {row['mask']}, {row['metric']} ({row['seeds']} seed(s)): "
          f"{row['model_value']:.4f} - {row['baseline_value']:.4f} = {row['difference']:+.4f} "
          f"+- {row['se']:.4f}")
