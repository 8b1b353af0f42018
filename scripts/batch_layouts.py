"""How to lay out variable-length SID histories in a batch: padded, length buckets, or packed.

    python scripts/batch_layouts.py --inter ../shared/datasets/amazon-beauty/amazon-beauty.inter

Prints the padding share of RecBole's padding and of the length-bucketed sampler over the
training rows, then times one TIGER encoder layer (forward + backward, one thread, medians of 3
interleaved rounds) on 4,096 histories padded, bucketed and packed (docs/benchmarks.md).
"""

import argparse
import time

import numpy as np
import torch

from recbole_semprune.data.batching import LengthBucketBatchSampler, padding_share
from recbole_semprune.model.layers import TransformerLayer


def training_lengths(inter_file, max_items):
    users = np.loadtxt(inter_file, skiprows=1, usecols=0, dtype=str)
    _, counts = np.unique(users, return_counts=True)
    return torch.tensor(np.concatenate([np.minimum(np.arange(1, n - 2), max_items)
                                        for n in counts if n > 3]))


def pack(rows, width):
    """First-fit packing of history lengths into rows of ``width`` tokens: (segment ids
    [R, width] with 0 = padding, block-diagonal attention mask [R, 1, width, width])."""
    bins, segments = [], []
    for n in rows.tolist():
        for i, used in enumerate(bins):
            if used + n <= width:
                bins[i] += n
                segments[i].append(n)
                break
        else:
            bins.append(n)
            segments.append([n])
    ids = torch.zeros(len(segments), width, dtype=torch.long)
    for i, s in enumerate(segments):
        ids[i, : sum(s)] = torch.repeat_interleave(torch.arange(1, len(s) + 1), torch.tensor(s))
    block = (ids[:, :, None] == ids[:, None, :]) & (ids[:, :, None] > 0)
    return ids, block[:, None]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inter", required=True, help="the dataset's .inter file")
    parser.add_argument("--max_items", type=int, default=20)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    lengths = training_lengths(args.inter, args.max_items)
    print(f"{len(lengths)} training rows, {lengths.float().mean():.2f} items on average\n")
    print("| batches | padding share of token slots |\n| --- | ---: |")
    print(f"| padded to {args.max_items} items (RecBole) | "
          f"{100 * (1 - lengths.float().mean().item() / args.max_items):.1f}% |")
    for buckets in (1, 8, 32, 128):
        sampler = LengthBucketBatchSampler(lengths, args.batch_size, True, buckets,
                                           torch.Generator().manual_seed(0))
        print(f"| bucket_batches={buckets} | {100 * padding_share(lengths, list(sampler)):.1f}% |")

    width = args.max_items * args.levels
    sampler = LengthBucketBatchSampler(lengths, args.batch_size, True, 32,
                                       torch.Generator().manual_seed(0))
    batches = [lengths[b] * args.levels for b in list(sampler)[:8]]
    rows = torch.cat(batches)
    ids, block = pack(rows, width)
    layer = TransformerLayer(128, 6, 64, 1024, 0.0, 0.0, "relu")

    def step(x, mask, attn_mask=None):
        layer(x, padding_mask=mask, attn_mask=attn_mask)[0].sum().backward()

    def padded(bucketed=False):
        for b in batches:
            w = int(b.max()) if bucketed else width
            step(torch.randn(len(b), w, 128), torch.arange(w) < b[:, None])

    def packed():
        per = max(1, len(ids) // len(batches))
        for start in range(0, len(ids), per):
            part = slice(start, start + per)
            step(torch.randn(ids[part].shape[0], width, 128), ids[part] > 0, block[part])

    real = rows.sum().item()
    share = {"padded": 1 - real / (len(rows) * width),
             "bucketed": 1 - real / sum(int(b.max()) * len(b) for b in batches),
             "packed": 1 - real / ids.numel()}
    times = {name: [] for name in share}
    for _ in range(3):
        for name, run in (("padded", padded), ("bucketed", lambda: padded(True)), ("packed", packed)):
            begin = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - begin)
    print(f"\n{len(rows)} histories, {rows.float().mean():.1f} tokens on average\n")
    print("| layout | padding share of slots | s (fwd+bwd, median of 3) | speed-up vs padded |")
    print("| --- | ---: | ---: | ---: |")
    base = np.median(times["padded"])
    for name, values in times.items():
        print(f"| {name} | {100 * share[name]:.1f}% | {np.median(values):.2f} | "
              f"{base / np.median(values):.2f}x |")


if __name__ == "__main__":
    main()
