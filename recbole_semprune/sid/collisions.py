"""Collision groups split by collaborative clustering (``sid_collision: split``).

Items whose content is identical (shades of one product, or a catalogue that describes items
only by shared categories) get identical vectors and therefore identical semantic codes. With
``sid_collision: grow`` the de-duplication level then numbers them 0, 1, 2, ... up to the size
of the largest group: hundreds of arbitrary codes the model must choose among blind.

:func:`split_collisions` lets the training interactions separate what content cannot. Every
group of items sharing all semantic codes that is larger than ``sid_dedup_size`` is cut by
balanced k-means on the items' collaborative vectors (PPMI of training co-occurrence, see
:mod:`.embeddings`) into ``ceil(size / sid_dedup_size)`` clusters of at most
``sid_dedup_size`` items. One cluster keeps the group's code; every other cluster takes a code
of the last semantic level that no item with the same first ``sid_levels - 1`` codes uses yet,
the free code whose centroid lies nearest the group's own. Items bought together therefore
share their last semantic code, and the de-duplication level stays at ``sid_dedup_size``.

If a parent (the items sharing the first ``sid_levels - 1`` codes) has too few free codes, its
groups are cut into the fewest larger clusters that fit (the smallest cap that does), and the
de-duplication level grows to that cap, with a warning.
"""

import math

import torch

from recbole_semprune.sid.quantizers import kmeans, squared_distances


def group_index(codes):
    """``(group [n], counts [groups])``: rows of ``codes`` [n, L] with equal codes share a
    group; groups are numbered in the order of their codes. ``L = 0`` is one group."""
    if codes.shape[1] == 0:
        return torch.zeros(codes.shape[0], dtype=torch.long), torch.tensor([codes.shape[0]])
    _, group, counts = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
    return group, counts


def smallest_cap(sizes, free, cap):
    """The smallest ``c >= cap`` such that cutting every group of ``sizes`` larger than ``c``
    into ``ceil(size / c)`` clusters needs at most ``free`` new codes."""

    def needed(c):
        return sum(math.ceil(size / c) - 1 for size in sizes if size > c)

    if needed(cap) <= free:
        return cap
    low, high = cap, max(sizes)  # needed(low) > free, needed(high) == 0
    while high - low > 1:
        middle = (low + high) // 2
        if needed(middle) <= free:
            high = middle
        else:
            low = middle
    return high


def split_collisions(prefix, level_size, cap, vectors, codebook, iters, generator):
    """Split the collision groups of ``prefix`` larger than ``cap`` (see the module docstring).

    Args:
        prefix (torch.LongTensor): [n, L] semantic codes of the real items (no padding row).
        level_size (int): codebook size of the last semantic level.
        cap (int): ``sid_dedup_size``, the largest group wanted.
        vectors (callable): returns the collaborative vectors of the same rows, float [n, d]
            (all zero for items without training interactions); called only if a group is
            larger than ``cap``.
        codebook (torch.Tensor or None): [level_size, d'] centroids of the last semantic
            level; free codes are taken nearest the group's centroid first (ascending code
            order when None).
        iters (int): Lloyd iterations of each balanced k-means.
        generator (torch.Generator): the seeded generator of the build.

    Returns:
        tuple: ``(new prefix [n, L], report)``. ``report`` holds ``groups`` (groups split),
        ``items`` (items in them), ``new_groups`` (groups they became), ``without_interactions``
        (items among them with no training co-occurrence, placed by k-means on a zero vector)
        and ``cap`` (the largest cap used; above ``cap`` only where codes ran out).
    """
    group, counts = group_index(prefix)
    oversize = torch.nonzero(counts > cap).flatten()
    report = {"groups": 0, "items": 0, "new_groups": 0, "without_interactions": 0, "cap": cap}
    if len(oversize) == 0:
        return prefix, report
    collaborative = torch.as_tensor(vectors(), dtype=torch.float32)
    prefix = prefix.clone()
    parent, _ = group_index(prefix[:, :-1])
    group_parent = torch.empty(len(counts), dtype=torch.long)
    group_parent[group] = parent
    for parent_id in torch.unique(group_parent[oversize]).tolist():
        in_parent = parent == parent_id
        used = torch.zeros(level_size, dtype=torch.bool)
        used[prefix[in_parent, -1]] = True
        free = torch.nonzero(~used).flatten()
        groups = oversize[group_parent[oversize] == parent_id]
        parent_cap = smallest_cap(counts[groups].tolist(), len(free), cap)
        report["cap"] = max(report["cap"], parent_cap)
        for group_id in groups.tolist():
            rows = torch.nonzero(group == group_id).flatten()
            clusters = math.ceil(len(rows) / parent_cap)
            if clusters == 1:
                continue
            # balanced: every cluster holds at most ceil(len(rows) / clusters) <= parent_cap
            _, assign = kmeans(collaborative[rows], clusters, iters, generator, balanced=True)
            code = int(prefix[rows[0], -1])
            if codebook is None:
                order = free
            else:
                distance = squared_distances(codebook[code : code + 1], codebook[free])[0]
                order = free[torch.argsort(distance, stable=True)]
            new_codes = torch.cat([torch.tensor([code]), order[: clusters - 1]])
            free = order[clusters - 1 :]
            prefix[rows, -1] = new_codes[assign]
            report["groups"] += 1
            report["items"] += len(rows)
            report["new_groups"] += clusters
            report["without_interactions"] += int(
                (collaborative[rows].abs().sum(dim=1) == 0).sum()
            )
    return prefix, report
