"""RecBole's ``SequentialDataset`` with the extra fields some plugin models need.

:class:`SIDSequentialDataset` is what every SID model gets (see
:func:`recbole_semprune.utils.create_dataset`, which passes in what the model class declares). It builds exactly RecBole's rows and splits,
then adds, to the **training** split only:

- ``future items`` (models whose class method ``future_items(config)`` returns ``D > 0``, e.g.
  STAMP's multi-step auxiliary prediction on the encoder-decoder backbone): for each training
  row, the ``D`` items that follow its target in that user's sequence, in the field
  :func:`future_field` ``[n_rows, D]``. An item is there only if its own row is a training
  row: a validation or test item is never an auxiliary target, and a row whose future runs out
  (or reaches the validation item) gets 0 (padding) in the missing slots, which the model
  masks. The validation and test splits carry no such field.

The order of a user's rows is the one RecBole's augmentation makes (its interactions sorted
by time), so "the items that follow" are exactly the targets of the user's next rows.

It also chooses the **training rows** (``train_rows``, see :func:`train_rows_mode`):

- ``prefix`` (default): RecBole's rows, one per prefix of each user's training sequence.
- ``user``: one training row per user, that user's last training row: history = every
  training item but the last (the ``MAX_ITEM_LIST_LENGTH`` most recent), target = the last
  training item. A model whose loss is a next-token loss on the whole stream (``Rec2PM``,
  ``DecoderOnlySID`` with ``dense_loss: True``) learns every prefix from this one row, where
  the prefix rows would repeat a long history hundreds of times. Only models whose class
  method ``dense_stream_loss(config)`` is true may use it. The validation and test rows are
  RecBole's, unchanged; the kept row is the user's latest *training* row, so it holds no
  validation or test item. The split keeps every user's whole training sequence beside its
  rows (``train_sequences``: the items in time order, and each user's count), so what is read
  from the training data, such as the co-occurrence behind the item codes, is the same
  whichever rows a model trains on.
"""

import numpy as np
import torch
from recbole.data.dataset import SequentialDataset
from recbole.data.interaction import Interaction
from recbole.utils import FeatureSource, FeatureType, set_color

from recbole_semprune import validate

__all__ = ["SIDSequentialDataset", "future_field", "train_rows_mode", "TRAIN_ROWS"]

_ROW_INDEX = "_row_in_user"  # position of an augmented row among its user's rows (temporary)
TRAIN_ROWS = ("prefix", "user")


def future_field(config):
    """Name of the future-items field: ``<ITEM_ID_FIELD>_future``."""
    return f"{config['ITEM_ID_FIELD']}_future"


def train_rows_mode(config, dense_stream_loss=None):
    """``train_rows`` of ``config``, checked against the model: ``dense_stream_loss`` says
    whether it trains with a next-token loss on the whole stream (None: the model uses
    RecBole's own dataset, which has prefix rows only)."""
    mode = validate.choice("train_rows", config["train_rows"], TRAIN_ROWS)
    if mode == "user" and dense_stream_loss is None:
        raise ValueError(
            f"train_rows: {mode} is a setting of this plugin's SID datasets; "
            f"{config['model']} uses RecBole's own dataset, which always makes one training row "
            "per prefix. Remove train_rows for this model."
        )
    if mode == "user" and not dense_stream_loss:
        raise ValueError(
            f"train_rows: user keeps one training row per user, which only a model trained with "
            f"a next-token loss on the whole stream learns every prefix from; {config['model']} "
            "has no such loss. Use Rec2PM, or DecoderOnlySID with dense_loss: True, or set "
            "train_rows: prefix."
        )
    return mode


class SIDSequentialDataset(SequentialDataset):
    """RecBole's sequential dataset plus the training-only fields a model asks for:
    ``future_items`` per training row and whether it has a ``dense_stream_loss`` (the model
    class's answers, passed in by :func:`recbole_semprune.utils.create_dataset`, so the data
    never imports a model)."""

    def __init__(self, config, future_items=0, dense_stream_loss=False):
        self.train_rows = train_rows_mode(config, bool(dense_stream_loss))
        self.n_future_items = validate.integer("future items", future_items, low=0)
        super().__init__(config)

    def data_augmentation(self):
        super().data_augmentation()
        if not self.n_future_items:
            return
        users = self.inter_feat[self.uid_field].numpy()
        rows = np.arange(len(users))
        first = np.r_[True, users[1:] != users[:-1]]
        group_start = np.maximum.accumulate(np.where(first, rows, 0))
        self.set_field_property(_ROW_INDEX, FeatureType.TOKEN, FeatureSource.INTERACTION, 1)
        self.inter_feat.update(Interaction({_ROW_INDEX: torch.from_numpy(rows - group_start)}))

    def build(self):
        datasets = super().build()
        if self.n_future_items:
            self._add_future_items(datasets)
        self._select_train_rows(datasets)
        return datasets

    def _add_future_items(self, datasets):
        """Future items of every training row, from training rows only (see module doc)."""
        feat = datasets[0].inter_feat
        users, index = feat[self.uid_field].long(), feat[_ROW_INDEX].long()
        targets = feat[self.iid_field].long()
        future = torch.zeros(len(feat), self.n_future_items, dtype=torch.long)
        if len(feat):
            # (user, row index) as one sortable key; look up the row `step` rows later
            width = int(index.max()) + self.n_future_items + 1
            keys = users * width + index
            order = keys.argsort()
            sorted_keys = keys[order]
            for step in range(1, self.n_future_items + 1):
                wanted = keys + step
                slot = torch.searchsorted(sorted_keys, wanted).clamp(max=len(keys) - 1)
                found = sorted_keys[slot] == wanted
                future[:, step - 1] = torch.where(found, targets[order[slot]], 0)
        name = future_field(self.config)
        for dataset in datasets:  # the row index was only needed here; no split keeps it
            dataset.inter_feat.drop(_ROW_INDEX)
        for properties in (self.field2type, self.field2source, self.field2seqlen):
            properties.pop(_ROW_INDEX, None)  # shared by the splits (shallow copies)
        self.set_field_property(
            name, FeatureType.TOKEN_SEQ, FeatureSource.INTERACTION, self.n_future_items
        )
        feat.update(Interaction({name: future}))
        filled = (future > 0).float().mean(0).tolist() if len(feat) else []
        self.logger.info(
            set_color("future items", "blue")
            + f": {self.n_future_items} per training row, from training rows only; rows that "
            + "have step k: "
            + ", ".join(f"k={k + 1}: {100 * share:.1f}%" for k, share in enumerate(filled))
        )

    def _select_train_rows(self, datasets):
        """``train_rows: user``: keep each user's last training row (see module doc)."""
        feat = datasets[0].inter_feat
        n_prefix = len(feat)
        if self.train_rows == "prefix":
            self.logger.info(
                set_color("training rows", "blue")
                + ": prefix (RecBole's, one per prefix of each user's training sequence): "
                + str(n_prefix)
            )
            return
        users = feat[self.uid_field].numpy()
        # A user's training rows are in time order (RecBole's stable sorts), so the last one has
        # the user's latest training item as target and all earlier ones (truncated) as history.
        _, last_from_end = np.unique(users[::-1], return_index=True)
        keep = np.sort(len(users) - 1 - last_from_end)
        # each user's training sequence: the first row's one history item, then every target
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        first_items = feat[getattr(self, f"{self.iid_field}_list_field")][:, 0].numpy()[starts]
        datasets[0].train_sequences = (
            np.insert(feat[self.iid_field].numpy().astype(np.int64), starts, first_items),
            np.diff(np.r_[starts, len(users)]) + 1,
        )
        datasets[0].inter_feat = feat[torch.from_numpy(keep)]
        self.logger.info(
            set_color("training rows", "blue")
            + f": user (one per user: the whole training sequence, history capped at "
            + f"MAX_ITEM_LIST_LENGTH={self.max_item_list_len}): {len(keep)} rows instead of "
            + f"{n_prefix} prefix rows; validation and test rows unchanged"
        )
