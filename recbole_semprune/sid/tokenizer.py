"""Item features -> cached, collision-free semantic IDs.

:func:`build_semantic_ids` is the one entry point the models use::

    sids = build_semantic_ids(config, train_data.dataset)
    sids.codes          # LongTensor [item_num, L]; row 0 (padding item) is all -1
    sids.level_sizes    # codebook size of each of the L levels; the last one de-duplicates
    sids.meta           # diagnostics

Pipeline: item text (or an embedding file, or training co-occurrence) -> item vectors
(:mod:`.embeddings`) -> ``sid_levels`` semantic codes (:mod:`.quantizers`; or uniform random
codes, backend ``random``) -> collision groups larger than ``sid_dedup_size`` split by training
co-occurrence (:mod:`.collisions`, ``sid_collision: split``) -> a last level that numbers the
items sharing all semantic codes 0, 1, 2, ... so every item gets its own code.
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
from recbole_semprune.sid.collisions import group_index, split_collisions
from recbole_semprune.sid.embeddings import (
    ItemEmbeddings,
    item_embeddings,
    sentence_model_fingerprint,
    training_collaborative_vectors,
)
from recbole_semprune.sid.features import (
    TrainingInteractions,
    has_words,
    hash_texts,
    item_texts,
    resolve_text_fields,
)
from recbole_semprune.sid.quantizers import fixed_threads, residual_kmeans, train_rqvae
from recbole_semprune.sid.settings import (
    fuses_collaborative,
    read_settings,
    result_settings,
    splits_collisions,
)

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
    group, counts = group_index(prefix)
    order = torch.argsort(group, stable=True)  # by group, then by item id
    first = torch.cumsum(counts, 0) - counts
    dedup = torch.empty_like(group)
    dedup[order] = torch.arange(len(group)) - first[group[order]]
    return dedup, counts[group]


def random_codes(count, sizes, generator):
    """[count, len(sizes)] codes drawn uniformly from each codebook."""
    return torch.stack(
        [torch.randint(size, (count,), generator=generator) for size in sizes], 1
    ).reshape(count, len(sizes))


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


def _progress_bar(config, first_stage):
    """RecBole-style bar over the three stages of a build (embeddings, quantiser,
    de-duplication), shown when ``show_progress`` is on."""
    show = bool(config["show_progress"]) if "show_progress" in config else False
    bar = tqdm(total=3, ncols=100, desc=set_color("Semantic IDs", "pink"), disable=not show)
    bar.set_postfix_str(first_stage)
    return bar


def _cache_dir(settings, config):
    if settings["sid_cache_dir"]:
        return settings["sid_cache_dir"]
    checkpoint_dir = config["checkpoint_dir"] if "checkpoint_dir" in config else None
    return os.path.join(checkpoint_dir or "saved", "sid_cache")


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
            ``collaborative``, items without text, ``sid_collision: split``) from
            ``dataset.inter_feat``, which must therefore be the training split's.

    Returns:
        SemanticIDs: codes, level sizes and diagnostics. ``meta`` holds ``codebook_usage``
        (``[used, size]`` per level), ``collision_rate`` (fraction of items sharing their
        semantic prefix with another item, before de-duplication),
        ``largest_collision_group``, the same two ``_before_split``, ``split`` (what the
        split did, or None), ``reconstruction_error`` (per level), item counts by vector
        source, ``seconds``, ``backend``, ``quantizer``, ``cache_hit`` and ``cache_path``.
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
    uses_collaborative = (
        backend == "collaborative"
        or fuses_collaborative(settings)
        or (text_backend and not all(has_words(pairs) for pairs in texts[1:]))
    )
    split = splits_collisions(settings)
    interactions = TrainingInteractions(dataset) if uses_collaborative or split else None

    key_parts = {
        "dataset": dataset_name,
        "files": [cache.file_fingerprint(path) for path in cache.dataset_files(dataset)],
        "item_tokens": cache.hash_strings(item_tokens),
        "settings": result_settings(settings, uses_collaborative),
    }
    if text_backend:
        key_parts["text_fields"] = fields
        key_parts["texts"] = hash_texts(texts)
    if interactions is not None:
        key_parts["interactions"] = interactions.fingerprint()
    if backend == "file":
        key_parts["embedding_file"] = cache.file_fingerprint(settings["sid_embedding_file"])
    if backend == "sentence":
        key_parts["sentence_model"] = sentence_model_fingerprint(settings["sid_sentence_model"])
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

    method = "random codes" if backend == "random" else f"{backend} + {settings['sid_quantizer']}"
    logger.info(
        set_color("Building semantic IDs", "green")
        + f" for {num_items} items of '{dataset_name}' ({method}, "
        + f"{'x'.join(map(str, sizes))} + dedup"
        + (f", text fields {fields}" if text_backend else "")
        + ")"
    )
    progress = _progress_bar(config, f"{method} item embeddings")
    generator = torch.Generator().manual_seed(settings["seed"])
    prefix = torch.full((item_num, len(sizes)), PAD_CODE, dtype=torch.long)
    if backend == "random":
        # the floor: codes that carry no signal, from neither content nor interactions
        embeddings, quantized = None, None
        embedding_seconds = time.perf_counter() - start
        prefix[1:] = random_codes(num_items, sizes, generator)
        blank_items = np.zeros(0, dtype=np.int64)
    else:
        embeddings = item_embeddings(settings, texts, item_tokens, lambda: interactions)
        embedding_seconds = time.perf_counter() - start
        progress.update()
        progress.set_postfix_str(f"{settings['sid_quantizer']} quantiser")
        quantized, blank_items = _quantize_items(settings, embeddings, sizes, prefix, generator)
    quantize_seconds = time.perf_counter() - start - embedding_seconds
    progress.update()
    progress.set_postfix_str("de-duplication")

    _, before = deduplicate(prefix[1:])
    prefixes_before = int(len(torch.unique(prefix[1:], dim=0)))
    report, split_start = None, time.perf_counter()
    if split:
        def collaborative_vectors():
            if backend == "collaborative":  # the quantiser's float32 copy, as always split
                return embeddings.vectors[1:]
            if embeddings.collaborative is not None:  # built for the fused vectors
                return embeddings.collaborative[1:]
            vectors = training_collaborative_vectors(
                interactions, settings["sid_embedding_dim"], settings["seed"]
            )
            return vectors[1:]

        with fixed_threads(1):
            prefix[1:], report = split_collisions(
                prefix[1:],
                sizes[-1],
                settings["sid_dedup_size"],
                collaborative_vectors,
                quantized.codebooks[-1],
                settings["sid_kmeans_iters"],
                generator,
            )
        _log_split(settings, report, num_items, int(before.max()))
    split_seconds = time.perf_counter() - split_start

    dedup, group_size = deduplicate(prefix[1:])
    largest = int(group_size.max())
    dedup_size = max(settings["sid_dedup_size"], largest)
    if largest > settings["sid_dedup_size"]:
        if report is not None:
            advice = (
                "some prefixes of the last semantic level had too few free codes to split "
                "the groups further. Raise sid_codebook_size or sid_dedup_size to avoid it."
            )
        elif backend == "random":
            advice = "random codes are never split: raise sid_codebook_size or sid_levels."
        else:
            advice = (
                "items are never merged. Use sid_collision=split (groups cut by training "
                "co-occurrence) or raise sid_dedup_size, sid_codebook_size or sid_levels."
            )
        logger.warning(
            set_color("De-duplication level grown", "yellow")
            + f" from sid_dedup_size={settings['sid_dedup_size']} to {largest}: {largest} items "
            f"share all semantic codes; {advice}"
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
        "quantizer": None if quantized is None else settings["sid_quantizer"],
        "level_sizes": list(level_sizes),
        "seed": settings["seed"],
        "text_fields": list(fields),
        "embedding_dim": 0 if embeddings is None else int(embeddings.vectors.shape[1]),
        "tfidf_features": None if embeddings is None else embeddings.tfidf_features,
        "items_content": 0 if embeddings is None else embeddings.count(ItemEmbeddings.TEXT),
        "items_collaborative": (
            0 if embeddings is None else embeddings.count(ItemEmbeddings.COLLABORATIVE)
        ),
        "items_blank": int(len(blank_items)),
        "collaborative_weight": (
            settings["sid_collaborative_weight"] if fuses_collaborative(settings) else 0.0
        ),
        "codebook_usage": [
            [int(len(torch.unique(codes[1:, level]))), int(size)]
            for level, size in enumerate(level_sizes)
        ],
        "collision_rate": float((group_size > 1).float().mean()),
        "largest_collision_group": largest,
        "dedup_grown": largest > settings["sid_dedup_size"],
        "collision_handling": settings["sid_collision"],
        "prefixes": int(len(torch.unique(prefix[1:], dim=0))),
        "prefixes_before_split": prefixes_before,
        "collision_rate_before_split": float((before > 1).float().mean()),
        "largest_collision_group_before_split": int(before.max()),
        "split": report,
        "input_error": None if quantized is None else quantized.input_error,
        "reconstruction_error": [] if quantized is None else list(quantized.reconstruction_error),
        **({} if quantized is None else quantized.extra),
        "embedding_seconds": embedding_seconds,
        "quantize_seconds": quantize_seconds,
        "split_seconds": split_seconds,
        "build_seconds": seconds,
        "seconds": seconds,
        "cache_hit": False,
        "cache_path": path if settings["sid_cache"] else None,
    }
    progress.update(3 - progress.n)
    progress.close()
    if settings["sid_cache"]:
        cache.save(path, key, codes, level_sizes, meta)
        logger.info(f"Semantic IDs saved to [{path}]")
    log_diagnostics(meta)
    return SemanticIDs(codes, level_sizes, meta)


def _quantize_items(settings, embeddings, sizes, prefix, generator):
    """Fill ``prefix`` (in place) with the quantiser's codes of the items that have vectors
    and random codes for the rest; returns ``(QuantizerOutput, blank item ids)``."""
    num_items = prefix.shape[0] - 1
    fit_items = np.flatnonzero(embeddings.source != ItemEmbeddings.NONE)
    blank_items = np.flatnonzero(embeddings.source[1:] == ItemEmbeddings.NONE) + 1
    if len(fit_items) < sizes[0]:
        raise ValueError(
            f"Only {len(fit_items)} of {num_items} items have text or training interactions, "
            f"fewer than sid_codebook_size={sizes[0]}: lower sid_codebook_size or choose "
            f"another sid_embedding / sid_text_fields."
        )
    with fixed_threads(1):  # same codes on every machine, see fixed_threads
        quantized = _quantize(settings, embeddings.vectors[fit_items], sizes, generator)
    prefix[torch.from_numpy(fit_items)] = quantized.codes
    if len(blank_items) > 0:
        # No content and no interactions: the codes carry no meaning, so spread these items
        # uniformly over the codebooks instead of piling them onto one prefix.
        prefix[torch.from_numpy(blank_items)] = random_codes(len(blank_items), sizes, generator)
        logging.getLogger().warning(
            f"{len(blank_items)} item(s) have neither text nor training interactions: they get "
            "random (but unique) semantic IDs."
        )
    return quantized, blank_items


def _log_split(settings, report, num_items, largest_before):
    logger = logging.getLogger()
    cap = settings["sid_dedup_size"]
    if report["groups"] == 0:
        logger.info(
            f"Collision groups: none larger than sid_dedup_size={cap} (largest "
            f"{largest_before}), nothing split."
        )
        return
    logger.info(
        set_color("Collision groups split", "green")
        + f" (sid_collision=split): {report['groups']} group(s) of more than "
        f"sid_dedup_size={cap} items sharing all {settings['sid_levels']} semantic codes "
        f"({report['items']} items, {report['items'] / num_items:.1%} of all; largest "
        f"{largest_before}) were cut into {report['new_groups']} groups of at most "
        f"{report['cap']} by balanced k-means on their training co-occurrence vectors; the new "
        f"groups took free codes of semantic level {settings['sid_levels'] - 1}. "
        f"{report['without_interactions']} of these items have no training interactions "
        "(placed arbitrarily)."
    )


def diagnostics_table(meta):
    """The diagnostics of ``meta`` as lines of text (used by the log and by the CLI)."""
    lines = [f"{'level':>6}  {'size':>6}  {'used':>6}  {'usage':>7}  {'residual error':>14}"]
    errors = list(meta.get("reconstruction_error", []))
    for level, (used, size) in enumerate(meta["codebook_usage"]):
        is_dedup = level == len(meta["codebook_usage"]) - 1
        error = "" if is_dedup or level >= len(errors) else f"{errors[level]:.4f}"
        name = "dedup" if is_dedup else str(level)
        lines.append(f"{name:>6}  {size:>6}  {used:>6}  {used / size:>7.1%}  {error:>14}")
    if meta["backend"] == "random":
        lines.append(f"items: {meta['num_items']} (random codes: no content, no interactions)")
    else:
        lines.append(
            f"items: {meta['num_items']} (vectors from {meta['backend']} content: "
            f"{meta['items_content']}, collaborative: {meta['items_collaborative']}, "
            f"neither: {meta['items_blank']})"
        )
        if meta.get("collaborative_weight"):
            lines.append(
                f"content vectors fused with training co-occurrence, "
                f"sid_collaborative_weight={meta['collaborative_weight']:g}"
            )
    if meta["input_error"] is not None:
        lines.append(
            "input error (mean squared norm"
            + (" of the RQ-VAE latent" if meta["quantizer"] == "rqvae" else "")
            + f"): {meta['input_error']:.4f}"
        )
    lines += [
        f"collision rate before dedup: {meta['collision_rate']:.4f} "
        f"({meta['collision_rate']:.2%} of items share their semantic prefix)",
        f"largest collision group: {meta['largest_collision_group']}"
        + (" (dedup level grown)" if meta["dedup_grown"] else ""),
    ]
    split = meta.get("split")
    if split is None:
        lines.append(
            f"distinct semantic prefixes: {meta['prefixes']}; collision groups not split ("
            + ("random codes never are" if meta["backend"] == "random" else "sid_collision=grow")
            + ")"
        )
    else:
        lines += [
            f"distinct semantic prefixes: {meta['prefixes']} (before the split: "
            f"{meta['prefixes_before_split']})",
            f"collision groups split: {split['groups']} group(s) of {split['items']} items "
            f"-> {split['new_groups']} groups of at most {split['cap']}; before the split: "
            f"collision rate {meta['collision_rate_before_split']:.4f}, largest group "
            f"{meta['largest_collision_group_before_split']}",
        ]
    lines += [
        f"seconds: {meta['seconds']:.2f} (built in {meta['build_seconds']:.2f}: embeddings "
        f"{meta['embedding_seconds']:.2f}, quantiser {meta['quantize_seconds']:.2f}, "
        f"split {meta.get('split_seconds', 0.0):.2f})",
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
