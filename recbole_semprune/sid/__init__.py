"""Semantic IDs: item features -> cached, collision-free item codes for SID generative models.

>>> from recbole_semprune.sid import build_semantic_ids
>>> sids = build_semantic_ids(config, train_data.dataset)
>>> sids.codes.shape        # [item_num, sid_levels + 1]; row 0 (padding item) is all -1
>>> sids.level_sizes        # codebook size per level, the last one de-duplicates

Command line: ``python -m recbole_semprune.sid --dataset=ml-100k``. See docs/semantic_ids.md.
"""

from recbole_semprune.sid.settings import COLLISIONS, EMBEDDINGS, QUANTIZERS, read_settings
from recbole_semprune.sid.tokenizer import PAD_CODE, SemanticIDs, build_semantic_ids

__all__ = [
    "COLLISIONS",
    "EMBEDDINGS",
    "PAD_CODE",
    "QUANTIZERS",
    "SemanticIDs",
    "build_semantic_ids",
    "read_settings",
]
