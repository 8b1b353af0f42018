"""Item features -> cached, collision-free semantic IDs.

:func:`build_semantic_ids` is the one entry point the models use::

    sids = build_semantic_ids(config, train_data.dataset)
    sids.codes          # LongTensor [item_num, L]; row 0 (padding item) is all -1
    sids.level_sizes    # codebook size of each of the L levels; the last one de-duplicates
    sids.meta           # diagnostics

Pipeline: item text (or an embedding file, or training co-occurrence) -> item vectors
(:mod:`.embeddings`) -> ``sid_levels`` semantic codes (:mod:`.quantizers`) -> a last level that
numbers the items sharing all semantic codes 0, 1, 2, ... so every item gets its own code.
The result is cached (:mod:`.cache`).
"""

import logging
import os
import time

import numpy as np
import torch
from recbole.utils import set_color
from tqdm import tqdm

from recbole_semprune import distributed
from recbole_semprune.sid import cache
from recbole_semprune.sid.embeddings import ItemEmbeddings, item_embeddings
from recbole_semprune.sid.features import (
    TrainingInteractions,
    has_words,
    hash_texts,
    item_texts,
    resolve_text_fields,
)
from recbole_semprune.sid.quantizers import fixed_threads, residual_kmeans, train_rqvae
from recbole_semprune.sid.settings import read_settings, result_settings

PAD_CODE = -1


class SemanticIDs:
    """Semantic IDs of the items of one dataset.

    Attributes:
        codes (torch.LongTensor): [item_num, L], row ``i`` = code of internal item id ``i``;
            row 0 (RecBole's padding item) is all ``-1``; other entries lie in
            ``[0, level_sizes[l])``.
        level_sizes (list of int): codebook size of each level; the last level de-duplicates.
        meta (dict): diagnostics (see :func:`build_semantic_ids`).
    """

    def __init__(self, codes, level_sizes, meta):
        self.codes = codes
        self.level_sizes = list(level_sizes)
        self.meta = meta

    @property
    def num_levels(self):
        return len(self.level_sizes)

    @property
    def item_num(self):
        return self.codes.shape[0]

    def code_to_item(self):
        """``{tuple(code): internal item id}`` for every real item (decoding generated codes)."""
        return {tuple(code): item for item, code in enumerate(self.codes.tolist()) if item > 0}

    def __repr__(self):
        return (
            f"SemanticIDs(items={self.item_num - 1}, level_sizes={self.level_sizes}, "
            f"collision_rate={self.meta.get('collision_rate', float('nan')):.4f})"
        )


def deduplicate(prefix):
    """Number the rows that share a prefix 0, 1, 2, ... in row order.

    Args:
        prefix (torch.LongTensor): [n, L] semantic codes of the real items.

    Returns:
        tuple: ``(dedup [n], group_size [n])``: the extra code of each row and the size of its
        collision group.
    """
    _, group, counts = torch.unique(prefix, dim=0, return_inverse=True, return_counts=True)
    order = torch.argsort(group, stable=True)  # by group, then by item id
    first = torch.cumsum(counts, 0) - counts
    dedup = torch.empty_like(group)
    dedup[order] = torch.arange(len(group)) - first[group[order]]
    return dedup, counts[group]


def fitted_codebook_size(num_items):
    """A codebook size for ``num_items`` items (about 16 items per code, at most 256)."""
    return max(2, min(256, num_items // 16))


def check_sizes(settings, num_items, dataset_name):
    """The semantic levels' codebook sizes; ValueError if they exceed the items."""
    size = settings["sid_codebook_size"]
    if size > num_items:
        raise ValueError(
            f"sid_codebook_size={size} is larger than the number of items ({num_items}) of "
            f"dataset '{dataset_name}': a codebook cannot have more codes than items. Use "
            f"sid_codebook_size <= {num_items} (e.g. {fitted_codebook_size(num_items)})."
        )
    return [size] * settings["sid_levels"]


def _cache_dir(settings, config):
    if settings["sid_cache_dir"]:
        return settings["sid_cache_dir"]
    checkpoint_dir = config["checkpoint_dir"] if "checkpoint_dir" in config else None
    return os.path.join(checkpoint_dir or "saved", "sid_cache")


def _progress_bar(config, first_stage):
    """RecBole-style bar over the three stages of a build (embeddings, quantiser,
    de-duplication), shown when ``show_progress`` is on."""
    show = bool(config["show_progress"]) if "show_progress" in config else False
    bar = tqdm(total=3, ncols=100, desc=set_color("Semantic IDs", "pink"), disable=not show)
    bar.set_postfix_str(first_stage)
    return bar


def _quantize(settings, vectors, sizes, generator):
    x = torch.from_numpy(np.ascontiguousarray(vectors))
    if settings["sid_quantizer"] == "rkmeans":
        return residual_kmeans(
            x, sizes, settings["sid_kmeans_iters"], settings["sid_balanced"], generator
        )
    return train_rqvae(x, sizes, settings, generator)


def build_semantic_ids(config, dataset):
    """Semantic IDs for every item of ``dataset``, from the cache when nothing changed.

    In a multi-process run (an initialised ``torch.distributed`` group of several processes)
    this is a collective that every rank calls: global rank 0 builds the codes (or reads
    them from its cache) and sends them to the other ranks, which neither build nor read a
    cache, so the codes are built once and are the same everywhere, with or without
    ``sid_cache`` and without a shared file system. Their ``meta`` then says
    ``received_from_rank: 0``.

    Args:
        config (Config): a RecBole / plugin Config (or a dict) with the ``sid_*`` keys of
            ``properties/sid.yaml`` (missing keys take those defaults), ``seed``,
            ``checkpoint_dir`` and ``dataset``.
        dataset (Dataset): the training split (``train_data.dataset``) or any built Dataset.
            Item text comes from ``dataset.item_feat``; collaborative vectors (backend
            ``collaborative``, or items without text) from ``dataset.inter_feat``, which must
            therefore be the training split's.

    Returns:
        SemanticIDs: codes, level sizes and diagnostics. ``meta`` holds ``codebook_usage``
        (``[used, size]`` per level), ``collision_rate`` (fraction of items sharing their
        semantic prefix with another item, before de-duplication),
        ``largest_collision_group``, ``reconstruction_error`` (per level), item counts by
        vector source, ``seconds``, ``backend``, ``quantizer``, ``cache_hit`` and
        ``cache_path``.
    """
    if not distributed.is_distributed():
        return _build_semantic_ids(config, dataset)
    sids = distributed.share_from_rank0(
        lambda: _build_semantic_ids(config, dataset), "the semantic IDs"
    )
    if torch.distributed.get_rank() != 0:
        sids = SemanticIDs(sids.codes, sids.level_sizes, dict(sids.meta, received_from_rank=0))
        logging.getLogger().info(
            set_color("Semantic IDs: received from rank 0", "green") + f" ({sids!r})"
        )
    return sids


def _build_semantic_ids(config, dataset):
    """:func:`build_semantic_ids` in one process."""
    start = time.perf_counter()
    logger = logging.getLogger()
    settings = read_settings(config)
    dataset_name = dataset.dataset_name
    item_num = dataset.item_num
    num_items = item_num - 1
    if num_items < 2:
        raise ValueError(f"Dataset '{dataset_name}' has {num_items} item(s): nothing to encode.")
    sizes = check_sizes(settings, num_items, dataset_name)
    backend = settings["sid_embedding"]
    item_tokens = [str(token) for token in dataset.field2id_token[dataset.iid_field]]

    text_backend = backend in ("tfidf", "sentence")
    fields = resolve_text_fields(dataset, settings["sid_text_fields"]) if text_backend else []
    texts = item_texts(dataset, fields) if text_backend else None
    uses_collaborative = backend == "collaborative" or (
        text_backend and not all(has_words(pairs) for pairs in texts[1:])
    )
    interactions = TrainingInteractions(dataset) if uses_collaborative else None

    key_parts = {
        "dataset": dataset_name,
        "files": [cache.file_fingerprint(path) for path in cache.dataset_files(dataset)],
        "item_tokens": cache.hash_strings(item_tokens),
        "settings": result_settings(settings, uses_collaborative),
    }
    if text_backend:
        key_parts["text_fields"] = fields
        key_parts["texts"] = hash_texts(texts)
    if uses_collaborative:
        key_parts["interactions"] = interactions.fingerprint()
    if backend == "file":
        key_parts["embedding_file"] = cache.file_fingerprint(settings["sid_embedding_file"])
    key = cache.cache_key(key_parts)
    path = cache.cache_path(_cache_dir(settings, config), dataset_name, settings, key)

    if settings["sid_cache"]:
        cached = cache.load(path, key, item_num, settings["sid_levels"] + 1)
        if cached is not None:
            codes, level_sizes, meta = cached
            meta.update(cache_hit=True, cache_path=path, seconds=time.perf_counter() - start)
            logger.info(set_color("Semantic IDs: cache hit", "green") + f" [{path}]")
            log_diagnostics(meta)
            return SemanticIDs(codes, level_sizes, meta)

    logger.info(
        set_color("Building semantic IDs", "green")
        + f" for {num_items} items of '{dataset_name}' ({backend} + {settings['sid_quantizer']}, "
        + f"{'x'.join(map(str, sizes))} + dedup"
        + (f", text fields {fields}" if text_backend else "")
        + ")"
    )
    progress = _progress_bar(config, f"{backend} item embeddings")
    embeddings = item_embeddings(settings, texts, item_tokens, lambda: interactions)
    embedding_seconds = time.perf_counter() - start
    progress.update()
    progress.set_postfix_str(f"{settings['sid_quantizer']} quantiser")
    fit_items = np.flatnonzero(embeddings.source != ItemEmbeddings.NONE)
    blank_items = np.flatnonzero(embeddings.source[1:] == ItemEmbeddings.NONE) + 1
    if len(fit_items) < sizes[0]:
        raise ValueError(
            f"Only {len(fit_items)} of {num_items} items have text or training interactions, "
            f"fewer than sid_codebook_size={sizes[0]}: lower sid_codebook_size or choose "
            f"another sid_embedding / sid_text_fields."
        )

    generator = torch.Generator().manual_seed(settings["seed"])
    with fixed_threads(1):  # same codes on every machine, see fixed_threads
        quantized = _quantize(settings, embeddings.vectors[fit_items], sizes, generator)
    quantize_seconds = time.perf_counter() - start - embedding_seconds
    progress.update()
    progress.set_postfix_str("de-duplication")
    prefix = torch.full((item_num, len(sizes)), PAD_CODE, dtype=torch.long)
    prefix[torch.from_numpy(fit_items)] = quantized.codes
    if len(blank_items) > 0:
        # No content and no interactions: the codes carry no meaning, so spread these items
        # uniformly over the codebooks instead of piling them onto one prefix.
        random_codes = torch.stack(
            [torch.randint(size, (len(blank_items),), generator=generator) for size in sizes], 1
        )
        prefix[torch.from_numpy(blank_items)] = random_codes
        logger.warning(
            f"{len(blank_items)} item(s) have neither text nor training interactions: they get "
            "random (but unique) semantic IDs."
        )

    dedup, group_size = deduplicate(prefix[1:])
    largest = int(group_size.max())
    dedup_size = max(settings["sid_dedup_size"], largest)
    if largest > settings["sid_dedup_size"]:
        logger.warning(
            set_color("De-duplication level grown", "yellow")
            + f" from sid_dedup_size={settings['sid_dedup_size']} to {largest}: {largest} items "
            "share all semantic codes (items are never merged). Raise sid_dedup_size, "
            "sid_codebook_size or sid_levels to avoid it."
        )
    codes = torch.full((item_num, len(sizes) + 1), PAD_CODE, dtype=torch.long)
    codes[1:, :-1] = prefix[1:]
    codes[1:, -1] = dedup
    level_sizes = sizes + [dedup_size]
    assert len(torch.unique(codes[1:], dim=0)) == num_items, "semantic IDs are not unique"
    assert all(int(codes[1:, level].max()) < size for level, size in enumerate(level_sizes))

    seconds = time.perf_counter() - start
    meta = {
        "dataset": dataset_name,
        "num_items": num_items,
        "backend": backend,
        "quantizer": settings["sid_quantizer"],
        "level_sizes": list(level_sizes),
        "seed": settings["seed"],
        "text_fields": list(fields),
        "embedding_dim": int(embeddings.vectors.shape[1]),
        "tfidf_features": embeddings.tfidf_features,
        "items_content": embeddings.count(ItemEmbeddings.TEXT),
        "items_collaborative": embeddings.count(ItemEmbeddings.COLLABORATIVE),
        "items_blank": int(len(blank_items)),
        "codebook_usage": [
            [int(len(torch.unique(codes[1:, level]))), int(size)]
            for level, size in enumerate(level_sizes)
        ],
        "collision_rate": float((group_size > 1).float().mean()),
        "largest_collision_group": largest,
        "dedup_grown": largest > settings["sid_dedup_size"],
        "input_error": quantized.input_error,
        "reconstruction_error": list(quantized.reconstruction_error),
        **quantized.extra,
        "embedding_seconds": embedding_seconds,
        "quantize_seconds": quantize_seconds,
        "build_seconds": seconds,
        "seconds": seconds,
        "cache_hit": False,
        "cache_path": path if settings["sid_cache"] else None,
    }
    if settings["sid_cache"]:
        cache.save(path, key, codes, level_sizes, meta)
        logger.info(f"Semantic IDs saved to [{path}]")
    progress.update()
    progress.close()
    log_diagnostics(meta)
    return SemanticIDs(codes, level_sizes, meta)


def diagnostics_table(meta):
    """The diagnostics of ``meta`` as lines of text (used by the log and by the CLI)."""
    lines = [f"{'level':>6}  {'size':>6}  {'used':>6}  {'usage':>7}  {'residual error':>14}"]
    errors = list(meta.get("reconstruction_error", []))
    for level, (used, size) in enumerate(meta["codebook_usage"]):
        is_dedup = level == len(meta["codebook_usage"]) - 1
        error = "" if is_dedup or level >= len(errors) else f"{errors[level]:.4f}"
        name = "dedup" if is_dedup else str(level)
        lines.append(f"{name:>6}  {size:>6}  {used:>6}  {used / size:>7.1%}  {error:>14}")
    lines += [
        f"items: {meta['num_items']} (vectors from {meta['backend']} content: "
        f"{meta['items_content']}, collaborative: {meta['items_collaborative']}, "
        f"neither: {meta['items_blank']})",
        f"input error (mean squared norm"
        + (" of the RQ-VAE latent" if meta["quantizer"] == "rqvae" else "")
        + f"): {meta['input_error']:.4f}",
        f"collision rate before dedup: {meta['collision_rate']:.4f} "
        f"({meta['collision_rate']:.2%} of items share their semantic prefix)",
        f"largest collision group: {meta['largest_collision_group']}"
        + (" (dedup level grown)" if meta["dedup_grown"] else ""),
        f"seconds: {meta['seconds']:.2f} (built in {meta['build_seconds']:.2f}: embeddings "
        f"{meta['embedding_seconds']:.2f}, quantiser {meta['quantize_seconds']:.2f})",
        f"backend: {meta['backend']}, quantizer: {meta['quantizer']}, "
        f"cache hit: {meta['cache_hit']}, cache: {meta['cache_path']}",
    ]
    if "rqvae_decoder_mse" in meta:
        lines.append(
            f"rqvae decoder mse: {meta['rqvae_decoder_mse']:.6f}, "
            f"code resets: {meta['rqvae_code_resets']}"
        )
    return lines


def log_diagnostics(meta):
    logger = logging.getLogger()
    logger.info(set_color("Semantic ID diagnostics", "blue"))
    for line in diagnostics_table(meta):
        logger.info(line)
