"""Semantic-ID settings: the ``sid_*`` keys of ``properties/sid.yaml``, read from a Config.

:func:`read_settings` returns a plain dict with every key resolved and checked, so the rest of
the package never touches the Config. Keys missing from the Config (e.g. a plain RecBole
``Config`` that did not load ``sid.yaml``) take the defaults of ``sid.yaml``.
"""

import os

import yaml

from recbole_semprune import validate

SID_YAML = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "properties", "sid.yaml"
)

EMBEDDINGS = ("tfidf", "sentence", "file", "collaborative", "random")
# Backends whose vectors come from item content; sid_collaborative_weight fuses training
# co-occurrence into them.
CONTENT_EMBEDDINGS = ("tfidf", "sentence", "file")
QUANTIZERS = ("rkmeans", "rqvae")
COLLISIONS = ("split", "grow")

# Which settings change the codes, per backend and per quantiser: these (and only these) go
# into the cache key, next to the data fingerprints.
COMMON_KEYS = (
    "sid_embedding",
    "sid_quantizer",
    "sid_levels",
    "sid_codebook_size",
    "sid_dedup_size",
    "sid_collision",
)
EMBEDDING_KEYS = {
    "tfidf": ("sid_text_fields", "sid_embedding_dim", "sid_char_ngrams"),
    "sentence": ("sid_text_fields", "sid_sentence_model"),
    "file": ("sid_embedding_file",),
    "collaborative": ("sid_embedding_dim",),
    "random": (),
}
# Collaborative vectors (items without text, split collision groups) depend on these keys too.
FALLBACK_KEYS = ("sid_embedding_dim",)
# Splitting collision groups runs balanced k-means on collaborative vectors.
SPLIT_KEYS = ("sid_embedding_dim", "sid_kmeans_iters")
QUANTIZER_KEYS = {
    "rkmeans": ("sid_kmeans_iters", "sid_balanced"),
    "rqvae": (
        "sid_kmeans_iters",
        "sid_balanced",
        "sid_rqvae_steps",
        "sid_rqvae_lr",
        "sid_rqvae_batch_size",
        "sid_rqvae_hidden_dim",
        "sid_rqvae_latent_dim",
        "sid_rqvae_beta",
    ),
}

POSITIVE_INTS = (
    "sid_levels",
    "sid_dedup_size",
    "sid_kmeans_iters",
    "sid_embedding_dim",
    "sid_rqvae_steps",
    "sid_rqvae_batch_size",
    "sid_rqvae_hidden_dim",
    "sid_rqvae_latent_dim",
)

_defaults = None


def default_settings():
    """The defaults of ``properties/sid.yaml`` as a dict (read once)."""
    global _defaults
    if _defaults is None:
        with open(SID_YAML, "r", encoding="utf-8") as f:
            _defaults = yaml.safe_load(f)
    return dict(_defaults)


def _as_field_list(value):
    """``sid_text_fields`` as a list of names; accepts a list or a 'a,b' / '[a, b]' string."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip().strip("[]").replace(",", " ").split()
        value = [name.strip("'\"") for name in value]
    return [str(name) for name in value]


def read_settings(config):
    """Every ``sid_*`` setting from ``config`` (a RecBole Config or a dict), checked."""
    settings = default_settings()
    for key in settings:
        if key in config:
            settings[key] = config[key]
    seed = config["seed"] if "seed" in config else None
    settings["seed"] = 2020 if seed is None else int(seed)  # 2020: RecBole's default seed

    for key, valid in (("sid_embedding", EMBEDDINGS), ("sid_quantizer", QUANTIZERS),
                       ("sid_collision", COLLISIONS)):
        settings[key] = validate.choice(key, str(settings[key]).lower(), valid)
    settings["sid_text_fields"] = _as_field_list(settings["sid_text_fields"])
    for key in POSITIVE_INTS:
        validate.integer(key, settings[key], low=1)
    validate.integer("sid_codebook_size", settings["sid_codebook_size"], low=2)
    for key in ("sid_rqvae_lr", "sid_rqvae_beta"):
        settings[key] = validate.number(key, settings[key], low=0, strict=True)
    for key in ("sid_balanced", "sid_cache"):
        settings[key] = validate.boolean(key, settings[key])
    weight = validate.number("sid_collaborative_weight", settings["sid_collaborative_weight"], low=0)
    if weight > 1:
        raise ValueError(
            f"sid_collaborative_weight={weight!r} must be in [0, 1]: the share of training "
            "co-occurrence in the item vectors (0 = content only)."
        )
    settings["sid_collaborative_weight"] = weight

    ngrams = settings["sid_char_ngrams"]
    if ngrams is not None:
        if isinstance(ngrams, int):
            ngrams = [ngrams, ngrams]
        ngrams = list(ngrams)
        valid = len(ngrams) == 2 and all(isinstance(n, int) and n >= 1 for n in ngrams)
        if not valid or ngrams[0] > ngrams[1]:
            raise ValueError(
                "sid_char_ngrams must be [min, max] with 1 <= min <= max, or ~ for words only; "
                f"got {settings['sid_char_ngrams']!r}."
            )
        settings["sid_char_ngrams"] = ngrams

    if settings["sid_embedding"] == "file" and not settings["sid_embedding_file"]:
        raise ValueError(
            "sid_embedding=file needs sid_embedding_file: the path of a .tsv/.txt or .npz file "
            "mapping item tokens to vectors (see docs/semantic_ids.md)."
        )
    if settings["sid_embedding"] == "sentence" and not settings["sid_sentence_model"]:
        raise ValueError(
            "sid_embedding=sentence needs sid_sentence_model (a model name or local path)."
        )
    return settings


def fuses_collaborative(settings):
    """Whether content vectors are fused with collaborative ones: a content backend and
    ``sid_collaborative_weight > 0`` (the weight is ignored by ``collaborative`` and
    ``random``)."""
    return (
        settings["sid_embedding"] in CONTENT_EMBEDDINGS
        and settings["sid_collaborative_weight"] > 0
    )


def splits_collisions(settings):
    """Whether collision groups larger than sid_dedup_size are split by collaborative
    clustering: ``sid_collision: split``, for every backend but ``random`` (the floor, which
    never reads interactions)."""
    return settings["sid_collision"] == "split" and settings["sid_embedding"] != "random"


def result_settings(settings, uses_collaborative):
    """The settings that change the codes (for the cache key), as a sorted dict."""
    keys = set(COMMON_KEYS) | set(EMBEDDING_KEYS[settings["sid_embedding"]])
    if settings["sid_embedding"] != "random":  # random codes use no quantiser
        keys |= set(QUANTIZER_KEYS[settings["sid_quantizer"]])
    if uses_collaborative:
        keys |= set(FALLBACK_KEYS)
    if fuses_collaborative(settings):  # only then: codes cached before the key existed stay valid
        keys |= {"sid_collaborative_weight"}
    if splits_collisions(settings):
        keys |= set(SPLIT_KEYS)
    chosen = {key: settings[key] for key in sorted(keys)}
    chosen["seed"] = settings["seed"]
    return chosen

