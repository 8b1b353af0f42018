"""What the tokenizer reads from a RecBole Dataset: item text and training interactions.

Both are returned in RecBole's internal item-id order (row ``i`` is item ``i``, row 0 the
padding item), so codes line up with the ids the models see.

RecBole keeps features as pandas DataFrames until ``dataset.build()`` and as
:class:`~recbole.data.interaction.Interaction` afterwards; item text is read from either.
Interactions are only read from a built (split) dataset: the caller passes the training split,
so valid / test interactions never reach the codes.
"""

import hashlib
import re

import numpy as np
import pandas as pd
import torch
from recbole.utils import FeatureType

TEXT_TYPES = (FeatureType.TOKEN, FeatureType.TOKEN_SEQ)
WORD = re.compile(r"[^\W_]")


def _columns(feat):
    if feat is None:
        return []
    return list(feat.columns)


def _column(feat, field):
    """One column as a numpy array (2-d for padded sequences of an Interaction)."""
    values = feat[field]
    if isinstance(values, torch.Tensor):
        return values.numpy()
    return values.to_numpy()


def item_field_names(dataset):
    """Item feature fields (without the item id) that hold text: token and token_seq fields."""
    return [
        field
        for field in _columns(dataset.item_feat)
        if field != dataset.iid_field and dataset.field2type.get(field) in TEXT_TYPES
    ]


def resolve_text_fields(dataset, requested):
    """The fields to read: ``requested`` checked against the dataset, or every text field."""
    available = [field for field in _columns(dataset.item_feat) if field != dataset.iid_field]
    if requested is None:
        return item_field_names(dataset)
    for field in requested:
        if field not in available:
            where = (
                f"Available item fields: {available}."
                if available
                else "The dataset has no item features loaded: add the fields to "
                "load_col: {item: [item_id, ...]} and check that the .item file exists."
            )
            raise ValueError(
                f"sid_text_fields names '{field}', which is not an item field of dataset "
                f"'{dataset.dataset_name}'. {where}"
            )
        if dataset.field2type[field] not in TEXT_TYPES:
            raise ValueError(
                f"sid_text_fields names '{field}', a {dataset.field2type[field].value} field: "
                f"only token and token_seq fields hold text. Text fields of this dataset: "
                f"{item_field_names(dataset)}."
            )
    return list(requested)


def _token_rows(dataset, field):
    """For every item, the list of non-padding token strings of ``field``."""
    id2token = np.asarray(dataset.field2id_token[field], dtype=object)
    values = _column(dataset.item_feat, field)
    rows = []
    if dataset.field2type[field] == FeatureType.TOKEN:
        ids = np.nan_to_num(values.astype(np.float64)).astype(np.int64)
        for token_id in ids:
            rows.append([id2token[token_id]] if token_id > 0 else [])
    elif values.ndim == 2:  # Interaction: padded [item_num, max_len] id matrix
        for seq in values:
            seq = seq[seq > 0]
            rows.append(list(id2token[seq]))
    else:  # DataFrame: one array (or a missing value) per item
        for seq in values:
            if not isinstance(seq, (list, np.ndarray)):
                rows.append([])
                continue
            seq = np.asarray(seq, dtype=np.int64)
            rows.append(list(id2token[seq[seq > 0]]))
    return rows


def item_texts(dataset, fields):
    """``texts[i]`` = list of ``(field, text)`` for item ``i``; empty for items without text.

    Token fields give their token, token_seq fields their tokens joined by spaces; padding and
    empty values are left out, and row 0 (padding item) is always empty.
    """
    texts = [[] for _ in range(dataset.item_num)]
    if dataset.item_feat is None or not fields:
        return texts
    for field in fields:
        for item, tokens in enumerate(_token_rows(dataset, field)):
            value = " ".join(str(token) for token in tokens).strip()
            if item > 0 and value:
                texts[item].append((field, value))
    return texts


def has_words(pairs):
    """Whether an item's ``(field, text)`` pairs hold at least one letter or digit."""
    return any(WORD.search(value) for _, value in pairs)


def hash_texts(texts):
    digest = hashlib.sha1()
    for pairs in texts:
        for field, value in pairs:
            digest.update(f"{field}\x1f{value}\x1e".encode("utf-8"))
        digest.update(b"\x1d")
    return digest.hexdigest()


def prefix_rows(items, lengths, width):
    """RecBole's training rows of sequences (``items`` of each user in time order, ``lengths``
    items per user): one row per item after a user's first, its target and its history (the
    ``width`` items before it at most, left-aligned, 0-padded), in the order of ``items``."""
    position = np.arange(len(items)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    rows = np.flatnonzero(position >= 1)
    count = np.minimum(position[rows], width)[:, None]
    offsets = np.arange(width)[None, :]
    index = np.where(offsets < count, rows[:, None] - count + offsets, -1)
    return items[rows], np.where(index >= 0, items[index], 0)


class TrainingInteractions:
    """The item ids of the training interactions, in one of two shapes.

    * sequential (a built ``SequentialDataset`` split): ``targets`` [n] and ``histories`` [n, L]
      (0-padded), one row per training example: RecBole's prefix rows, rebuilt from the
      split's ``train_sequences`` where it trains on one row per user (``train_rows: user``),
      so a model's rows never change the item codes;
    * general (any other built split): ``users`` [n] and ``items`` [n].
    """

    def __init__(self, dataset):
        inter = dataset.inter_feat
        if inter is None or isinstance(inter, pd.DataFrame):
            raise ValueError(
                "Collaborative item vectors (sid_embedding=collaborative, sid_collaborative_weight "
                "> 0, items without text, sid_collision=split) are built from the training "
                "interactions only, but this "
                "dataset has not been split: pass the training split "
                "(`train_data.dataset`, or `dataset.build()[0]`), not the dataset returned by "
                "create_dataset."
            )
        iid = dataset.iid_field
        suffix = dataset.config["LIST_SUFFIX"] or "_list"
        list_field = iid + suffix
        self.item_num = dataset.item_num
        sequences = getattr(dataset, "train_sequences", None)
        if list_field in inter.columns and sequences is not None:
            self.kind = "sequential"
            self.targets, self.histories = prefix_rows(*sequences, inter[list_field].shape[1])
        elif list_field in inter.columns:
            self.kind = "sequential"
            self.targets = inter[iid].numpy().astype(np.int64)
            self.histories = inter[list_field].numpy().astype(np.int64)
        else:
            self.kind = "general"
            self.users = inter[dataset.uid_field].numpy().astype(np.int64)
            self.items = inter[iid].numpy().astype(np.int64)

    def __len__(self):
        return len(self.targets) if self.kind == "sequential" else len(self.items)

    def fingerprint(self):
        digest = hashlib.sha1(self.kind.encode())
        if self.kind == "sequential":
            arrays = (self.targets, self.histories)
        else:
            arrays = (self.users, self.items)
        for array in arrays:
            digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def cooccurrence(self):
        """Symmetric item x item co-occurrence counts (scipy CSR, zero diagonal).

        Sequential: each training example pairs its target with every item of its history (so
        every pair of items within ``MAX_ITEM_LIST_LENGTH`` steps of a user's training sequence
        counts once). General: items rated by the same user.
        """
        import scipy.sparse as sp

        n = self.item_num
        if self.kind == "sequential":
            width = self.histories.shape[1]
            rows = np.repeat(self.targets, width)
            cols = self.histories.reshape(-1)
            keep = (cols > 0) & (rows > 0) & (rows != cols)
            rows, cols = rows[keep], cols[keep]
            counts = sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)).tocsr()
            counts = counts + counts.T
        else:
            keep = self.items > 0
            users, items = self.users[keep], self.items[keep]
            user_ids, users = np.unique(users, return_inverse=True)
            matrix = sp.csr_matrix(
                (np.ones(len(items)), (users, items)), shape=(len(user_ids), n)
            )
            matrix.data[:] = 1.0  # repeated interactions count once
            counts = (matrix.T @ matrix).tocsr()
            counts.setdiag(0)
        counts.eliminate_zeros()
        return counts.tocsr()
