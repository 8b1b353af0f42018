"""Length-aware batches for the SID models (``padding_free``, see docs/benchmarks.md).

A SID model turns a history of ``n`` items into ``n x L`` tokens and trims every batch to its
longest history (:meth:`~recbole_semprune.model.sid_recommender.SIDRecommender.history`), so
what a batch computes on padding is decided by how different the lengths of its rows are.
RecBole's loaders draw rows at random; :class:`LengthBucketBatchSampler` replaces their batch
sampler so that rows of similar length share a batch:

- training (shuffled): each epoch, the rows are shuffled with the loader's own generator (the
  one RecBole seeds and shuffles with), cut into chunks of ``bucket_batches`` batches, each
  chunk is sorted by history length and cut into batches, and the order of all batches is
  shuffled. Batches are still random draws from the data, only of rows of similar length;
  ``bucket_batches: 1`` keeps RecBole's exact batch composition (trimming only).
- evaluation (not shuffled): every row sorted by history length, stable, then cut into batches
  (the same order in every run; RecBole's evaluator is order-free, and the per-user analyses of
  :mod:`recbole_semprune.analysis` pair users by id).

Nothing else of RecBole's loaders changes (collation, transforms, negative sampling, the
batch size). A row's result does not depend on its batch-mates (tested), so this changes speed,
and for training the order rows are seen in, never what one row computes.
"""

import math
from logging import getLogger

import torch
from recbole.utils import set_color

__all__ = ["LengthBucketBatchSampler", "use_length_buckets", "padding_share"]


class LengthBucketBatchSampler(torch.utils.data.Sampler):
    """Batches of row indices with similar ``lengths`` (see the module doc)."""

    def __init__(self, lengths, batch_size, shuffle, bucket_batches=32, generator=None):
        if batch_size < 1 or bucket_batches < 1:
            raise ValueError(f"batch_size={batch_size} and bucket_batches={bucket_batches} must be >= 1")
        self.lengths = torch.as_tensor(lengths).long().cpu()
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.bucket_batches = int(bucket_batches)
        self.generator = generator

    def __len__(self):
        n, chunk = len(self.lengths), self.batch_size * self.bucket_batches
        if not self.shuffle:
            return math.ceil(n / self.batch_size)
        full, rest = divmod(n, chunk)
        return full * self.bucket_batches + math.ceil(rest / self.batch_size)

    def batches(self):
        """The list of batches (LongTensors of row indices) of one pass."""
        n = len(self.lengths)
        if not self.shuffle:
            order = torch.sort(self.lengths, stable=True).indices
            return list(order.split(self.batch_size))
        order = torch.randperm(n, generator=self.generator)
        batches = []
        for chunk in order.split(self.batch_size * self.bucket_batches):
            chunk = chunk[torch.sort(self.lengths[chunk], stable=True).indices]
            batches += list(chunk.split(self.batch_size))
        shuffled = torch.randperm(len(batches), generator=self.generator).tolist()
        return [batches[i] for i in shuffled]

    def __iter__(self):
        for batch in self.batches():
            yield batch.tolist()


def use_length_buckets(loader, config, shuffle):
    """Make RecBole's ``loader`` draw length-bucketed batches (in place); returns ``loader``.

    Loaders of several processes (RecBole's distributed sampler) are left as they are: their
    batches are still trimmed to the longest row, only not bucketed (a log line says so).
    """
    if getattr(loader, "sampler", None) is not None and isinstance(
        loader.sampler, torch.utils.data.distributed.DistributedSampler
    ):
        getLogger().info(
            set_color("padding_free", "blue")
            + ": several processes share this loader, so its batches are not bucketed by length"
            + " (each batch is still trimmed to its longest history)"
        )
        return loader
    lengths = loader._dataset.inter_feat[config["ITEM_LIST_LENGTH_FIELD"]]
    sampler = LengthBucketBatchSampler(
        lengths, loader.batch_size, shuffle, config["bucket_batches"], loader.generator
    )
    # torch's DataLoader forbids re-assigning its batch sampler after construction, but reads it
    # through `_index_sampler` on every new iterator; RecBole built the loader, so set it here.
    object.__setattr__(loader, "batch_sampler", sampler)
    return loader


def padding_share(lengths, batches):
    """Share of the token slots of ``batches`` (row index lists) that are padding when each
    batch is trimmed to its longest row; ``lengths`` per row."""
    lengths = torch.as_tensor(lengths).long()
    slots = real = 0
    for batch in batches:
        rows = lengths[torch.as_tensor(batch)]
        slots += int(rows.max()) * len(rows)
        real += int(rows.sum())
    return 1 - real / slots if slots else 0.0
