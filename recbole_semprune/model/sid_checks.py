"""Checks of a SID model's settings that need no model built, and settings sized by the data.

:class:`~recbole_semprune.model.sid_recommender.SIDRecommender` calls them from its class
methods ``check_config`` (before any data is loaded, ``quick_start.check_run``) and
``fit_to_dataset`` (once the dataset is loaded, before the semantic IDs are built).
"""

from recbole_semprune import validate
from recbole_semprune.data.protocol import item_text_fields
from recbole_semprune.model.retrieval import RetrievalSettings
from recbole_semprune.sid.settings import read_settings
from recbole_semprune.sid.tokenizer import check_sizes, fitted_codebook_size


def check_beam_size(config):
    """``beam_size``, a positive int at least the largest ``topk`` (ValueError otherwise)."""
    beam_size, topk = config["beam_size"], config["topk"] or []
    topk = [topk] if isinstance(topk, int) else topk
    validate.integer("beam_size", beam_size, low=1)
    if topk and beam_size < max(topk):
        raise ValueError(
            f"beam_size={beam_size} is smaller than the largest topk={max(topk)}: beam "
            f"search returns beam_size items, so metrics @{max(topk)} would be wrong. "
            f"Set --beam_size={max(topk)} or more."
        )
    return beam_size


def check_item_count(semantic_ids, n_items):
    """Semantic IDs built for (or saved with) another item set raise ValueError."""
    if semantic_ids.codes.shape[0] != n_items:
        raise ValueError(
            f"semantic IDs cover {semantic_ids.codes.shape[0]} items but the dataset has {n_items}"
        )


def check_sid_settings(config):
    """The ``sid_*`` and ``retrieval_*`` keys, ``beam_size`` against ``topk`` and, for a text
    backend, that the ``sid_text_fields`` are loaded. Raises ValueError; returns warnings (item
    text in the ``.item`` file that ``load_col`` leaves out)."""
    settings = read_settings(config)
    check_beam_size(config)
    RetrievalSettings.from_config(config)
    if settings["sid_embedding"] not in ("tfidf", "sentence"):
        return []
    loaded, left_out = item_text_fields(config)
    missing = [f for f in settings["sid_text_fields"] or [] if f not in loaded]
    if missing:
        raise ValueError(
            f"sid_text_fields names {missing}, which load_col does not load from "
            f"{config['dataset']}.item (its loaded text fields: {loaded}): add them to "
            f"load_col: {{item: [{config['ITEM_ID_FIELD']}, ...]}} or drop them from "
            "sid_text_fields."
        )
    if left_out and settings["sid_text_fields"] is None:
        return [
            f"{config['dataset']}.item has text fields {left_out} that load_col does not "
            "load, so the semantic IDs do not read them: add them to load_col: {item: "
            "[...]} to use them."
        ]
    return []


def fit_codebook(config, dataset):
    """A default ``sid_codebook_size`` larger than the dataset's items is lowered to fit
    (returns the log line); one the user set raises ValueError."""
    settings, num_items = read_settings(config), dataset.item_num - 1
    try:
        check_sizes(settings, num_items, dataset.dataset_name)
    except ValueError:
        if "sid_codebook_size" in getattr(config, "external_config_dict", {}):
            raise
        size = fitted_codebook_size(num_items)
        config["sid_codebook_size"] = size
        return [
            f"sid_codebook_size: the default {settings['sid_codebook_size']} is larger than "
            f"the {num_items} items of '{dataset.dataset_name}': using {size} (set "
            "sid_codebook_size to choose)"
        ]
    return []
