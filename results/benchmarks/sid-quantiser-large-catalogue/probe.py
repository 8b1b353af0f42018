"""k-means++ seeding of the SID quantiser before and after 2026-12-06, in one process.

Before, every distance computation doubled the whole item matrix (``2.0 * x @ c.T`` parses as
``(2.0 * x) @ c.T``) and recomputed the items' squared norms: k-means++ does that once per
centroid. After, the products are doubled (exact in floating point) and the norms computed
once. Prints a markdown table (CPU seconds, one thread) and whether the centroids are equal.

    python results/benchmarks/sid-quantiser-large-catalogue/probe.py [ITEMS DIMS K]
"""

import sys
import time

import torch

from recbole_semprune.sid.quantizers import kmeans_plus_plus, squared_distances


def before_distances(x, centroids):  # the formula as it was
    dist = (x * x).sum(1, keepdim=True) - 2.0 * x @ centroids.T + (centroids * centroids).sum(1)
    return dist.clamp_min_(0.0)


def before_seeding(x, k, generator):  # kmeans_plus_plus as it was, on before_distances
    n = x.shape[0]
    first = torch.randint(n, (1,), generator=generator)
    centroids, closest = [x[first[0]]], before_distances(x, x[first]).squeeze(1)
    for _ in range(1, k):
        total = closest.sum()
        index = (torch.randint(n, (1,), generator=generator) if total <= 0
                 else torch.multinomial(closest / total, 1, generator=generator))
        centroids.append(x[index[0]])
        closest = torch.minimum(closest, before_distances(x, x[index]).squeeze(1))
    return torch.stack(centroids)


def timed(function, *args):
    begin = time.process_time()
    out = function(*args)
    return out, time.process_time() - begin


def main(items=150_000, dims=512, k=256):
    torch.set_num_threads(1)
    x = torch.randn(items, dims, generator=torch.Generator().manual_seed(0))
    old, old_s = timed(before_seeding, x, k, torch.Generator().manual_seed(1))
    new, new_s = timed(kmeans_plus_plus, x, k, torch.Generator().manual_seed(1))
    old_d, old_ds = timed(before_distances, x, old)
    new_d, new_ds = timed(squared_distances, x, new)
    print(f"{items:,} items x {dims} dims, K = {k}, one thread, CPU seconds\n")
    print("| step | before | after | after / before | equal |\n| --- | ---: | ---: | ---: | --- |")
    print(f"| k-means++ seeding | {old_s:.2f} | {new_s:.2f} | {new_s / old_s:.2f}x | "
          f"{torch.equal(old, new)} |")
    print(f"| one Lloyd distance matrix | {old_ds:.2f} | {new_ds:.2f} | {new_ds / old_ds:.2f}x | "
          f"{torch.equal(old_d, new_d)} |")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
