"""Tests of recbole_semprune.sid: item features -> cached, collision-free semantic IDs.

ml-100k (shipped inside RecBole, 1682 items) with small codebooks, plus tiny synthetic RecBole
datasets written to tmp_path for the corner cases.
"""

import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from recbole_semprune.config import Config
from recbole_semprune.sid import SemanticIDs, build_semantic_ids
from recbole_semprune.sid.__main__ import main as sid_main
from recbole_semprune.sid.__main__ import parse_args
from recbole_semprune.sid.embeddings import randomized_svd, read_embedding_file
from recbole_semprune.sid.features import item_texts
from recbole_semprune.sid.quantizers import balanced_assign, squared_distances
from recbole_semprune.utils import create_dataset

SHARED_DATASETS = Path(__file__).parents[1].parent / "shared" / "datasets"

SEQUENTIAL = {
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
    "train_neg_sample_args": None,
    "MAX_ITEM_LIST_LENGTH": 20,
}
SMALL = {"sid_levels": 3, "sid_codebook_size": 16, "sid_embedding_dim": 64, "sid_kmeans_iters": 20}


def with_settings(config, **settings):
    """A plain-dict copy of ``config`` with some keys changed (build_semantic_ids takes dicts)."""
    values = dict(config.final_config_dict)
    values.update(settings)
    return values


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    """(config, unsplit dataset, training split) of ml-100k, with 3 x 16 codebooks."""
    saved = tmp_path_factory.mktemp("saved")
    config = Config(
        model="SASRec",
        dataset="ml-100k",
        config_dict={"checkpoint_dir": str(saved), "sid_cache": False, **SMALL},
    )
    dataset = create_dataset(config)
    unsplit = create_dataset(config)
    train = dataset.build()[0]
    return config, unsplit, train


@pytest.fixture(scope="module")
def ml100k_sids(ml100k):
    config, _, train = ml100k
    return build_semantic_ids(config, train)


# ----------------------------------------------------------------------------- synthetic data


def write_dataset(root, name, items, sequences):
    """RecBole atomic files for ``items`` {token: title} and ``sequences`` {user: [tokens]}."""
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.item", "w") as f:
        f.write("item_id:token\ttitle:token_seq\n")
        for token, title in items.items():
            f.write(f"{token}\t{title}\n")
    with open(folder / f"{name}.inter", "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, tokens in sequences.items():
            for step, token in enumerate(tokens):
                f.write(f"{user}\t{token}\t{step}\n")


def synthetic_split(root, name, model="SASRec", **settings):
    config = Config(
        model=model,
        dataset=name,
        config_dict={
            "data_path": str(root),
            "checkpoint_dir": str(Path(root) / "saved"),
            "load_col": {
                "inter": ["user_id", "item_id", "timestamp"],
                "item": ["item_id", "title"],
            },
            "sid_text_fields": ["title"],
            "sid_cache": False,
            **SEQUENTIAL,
            **settings,
        },
    )
    dataset = create_dataset(config)
    return config, dataset, dataset.build()[0]


FRUIT = ["apple", "pear", "plum", "cherry", "mango", "peach", "grape", "lemon", "lime", "melon"]
TOOLS = ["hammer", "wrench", "saw", "drill", "chisel", "pliers", "file", "spanner", "axe", "vise"]


def two_families(root):
    """Two item families with disjoint vocabularies and disjoint users; in each family three
    items have no title (they only co-occur with their family), and one item has neither a
    title nor any interaction."""
    items, sequences = {}, {}
    families = (
        ("a", FRUIT, "fresh sweet juicy ripe organic fruit"),
        ("b", TOOLS, "strong steel hand workshop tool"),
    )
    for family, words, prefix in families:
        tokens = [f"{family}{i}" for i in range(len(words))]
        for token, word in zip(tokens, words):
            items[token] = f"{prefix} {word}"
        empty = [f"{family}_empty{i}" for i in range(3)]
        for token in empty:
            items[token] = ""
        for user in range(12):
            # the empty items come first, so they stay in the training part of the sequence
            order = [empty[user % 3], empty[(user + 1) % 3]]
            order += [tokens[(user + step) % len(tokens)] for step in range(6)]
            sequences[f"{family}user{user}"] = order
    items["lonely"] = ""
    write_dataset(root, "families", items, sequences)


# ----------------------------------------------------------------------------- codes


def test_codes_shape_padding_and_uniqueness(ml100k, ml100k_sids):
    _, _, train = ml100k
    sids = ml100k_sids
    assert isinstance(sids, SemanticIDs)
    assert sids.codes.dtype == torch.long
    assert tuple(sids.codes.shape) == (train.item_num, 4)
    assert sids.level_sizes[:3] == [16, 16, 16] and len(sids.level_sizes) == 4
    assert (sids.codes[0] == -1).all()
    real = sids.codes[1:]
    assert (real >= 0).all()
    for level, size in enumerate(sids.level_sizes):
        assert int(real[:, level].max()) < size
    assert len(torch.unique(real, dim=0)) == train.item_num - 1
    assert not (real == sids.codes[0]).all(dim=1).any()
    # decoding table covers every real item exactly once
    table = sids.code_to_item()
    assert len(table) == train.item_num - 1 and 0 not in table.values()


def test_meta_diagnostics(ml100k_sids):
    meta = ml100k_sids.meta
    prefix = ml100k_sids.codes[1:, :3]
    _, counts = torch.unique(prefix, dim=0, return_counts=True)
    assert meta["largest_collision_group"] == int(counts.max())
    assert meta["collision_rate"] == pytest.approx(float(counts[counts > 1].sum()) / 1682)
    assert meta["level_sizes"][-1] == max(16, int(counts.max()))
    for level, (used, size) in enumerate(meta["codebook_usage"]):
        assert used == len(torch.unique(ml100k_sids.codes[1:, level]))
        assert size == ml100k_sids.level_sizes[level]
    assert meta["backend"] == "tfidf" and meta["quantizer"] == "rkmeans"
    assert meta["cache_hit"] is False and meta["seconds"] > 0
    assert meta["items_content"] == 1682 and meta["items_blank"] == 0


def test_item_text_mapping_is_exact(ml100k):
    """Texts line up with internal ids, read from the unsplit (pandas) or split (Interaction)
    item features alike."""
    _, unsplit, train = ml100k
    fields = ["movie_title", "release_year", "class"]
    split_texts = item_texts(train, fields)
    assert item_texts(unsplit, fields) == split_texts
    toy_story = int(train.token2id(train.iid_field, "1"))
    assert split_texts[toy_story] == [
        ("movie_title", "Toy Story"),
        ("release_year", "1995"),
        ("class", "Animation Children's Comedy"),
    ]
    assert split_texts[0] == []


def test_text_fields_default_to_every_text_field(ml100k):
    config, _, train = ml100k
    sids = build_semantic_ids(with_settings(config, sid_text_fields=None), train)
    assert sids.meta["text_fields"] == ["movie_title", "release_year", "class"]
    only_titles = build_semantic_ids(with_settings(config, sid_text_fields=["movie_title"]), train)
    assert only_titles.meta["text_fields"] == ["movie_title"]
    assert not torch.equal(only_titles.codes, sids.codes)


def test_same_seed_same_codes_and_global_rng_untouched(ml100k, ml100k_sids):
    config, _, train = ml100k
    torch_state = torch.get_rng_state()
    numpy_state = np.random.get_state()[1].copy()
    again = build_semantic_ids(config, train)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    assert torch.equal(again.codes, ml100k_sids.codes)
    other_seed = build_semantic_ids(with_settings(config, seed=7), train)
    assert not torch.equal(other_seed.codes, ml100k_sids.codes)


def test_residual_kmeans_error_decreases_level_by_level(ml100k_sids):
    meta = ml100k_sids.meta
    errors = [meta["input_error"]] + meta["reconstruction_error"]
    assert len(errors) == 4
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors


def test_squared_distances_equal_the_doubled_input_form_bit_for_bit():
    """The distances double the products after the matmul (no copy of x per call); doubling is
    exact in floating point, so every code built before the change stays the same."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(700, 96, generator=generator) * torch.rand(700, 1, generator=generator) * 50
    centroids = torch.randn(37, 96, generator=generator)
    before = ((x * x).sum(1, keepdim=True) - (2.0 * x) @ centroids.T
              + (centroids * centroids).sum(1)).clamp_min(0.0)
    assert torch.equal(squared_distances(x, centroids), before)
    assert torch.equal(squared_distances(x, centroids, (x * x).sum(1, keepdim=True)), before)
    # a point's distance to itself is 0, not a negative rounding residue
    assert float(squared_distances(x[:3], x[:3]).diagonal().min()) == 0.0


def test_balanced_kmeans_respects_capacity(ml100k):
    config, _, train = ml100k
    # sid_collision=grow: the quantiser's codes as they are (a split moves items to free codes)
    settings = with_settings(config, sid_balanced=True, sid_collision="grow")
    sids = build_semantic_ids(settings, train)
    cap = math.ceil(1682 / 16)
    for level in range(3):
        assert int(torch.bincount(sids.codes[1:, level]).max()) <= cap
    assert len(torch.unique(sids.codes[1:], dim=0)) == 1682


def test_balanced_assign_fills_nearest_first():
    dist = torch.tensor([[0.0, 5.0], [1.0, 4.0], [2.0, 0.5], [0.2, 9.0]])
    # cluster 0 is everyone's favourite but holds 2: rows 0 and 3 (closest) win it
    assert balanced_assign(dist, 2).tolist() == [0, 1, 1, 0]


def test_randomized_svd_matches_exact():
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((60, 8)) @ rng.standard_normal((8, 40))
    u, s, vt = randomized_svd(matrix, 8, seed=0)
    assert np.allclose(s, np.linalg.svd(matrix, compute_uv=False)[:8])
    assert np.allclose((u * s) @ vt, matrix)


def test_rqvae_codes_unique_and_deterministic(ml100k):
    config, _, train = ml100k
    settings = with_settings(
        config, sid_quantizer="rqvae", sid_rqvae_steps=60, sid_rqvae_batch_size=256
    )
    first = build_semantic_ids(settings, train)
    second = build_semantic_ids(settings, train)
    assert torch.equal(first.codes, second.codes)
    assert len(torch.unique(first.codes[1:], dim=0)) == 1682
    assert first.meta["quantizer"] == "rqvae" and first.meta["rqvae_decoder_mse"] > 0
    assert len(first.meta["reconstruction_error"]) == 3


def test_collaborative_backend(ml100k):
    config, _, train = ml100k
    sids = build_semantic_ids(with_settings(config, sid_embedding="collaborative"), train)
    assert sids.meta["backend"] == "collaborative"
    assert sids.meta["items_collaborative"] + sids.meta["items_blank"] == 1682
    assert sids.meta["items_collaborative"] > 1500
    assert len(torch.unique(sids.codes[1:], dim=0)) == 1682


# ----------------------------------------------------------------------------- fallbacks, dedup


@pytest.mark.parametrize("model", ["SASRec", "BPR"])  # sequential and general training splits
def test_collaborative_fallback_for_items_without_text(tmp_path, caplog, model):
    two_families(tmp_path)
    config, _, train = synthetic_split(
        tmp_path, "families", model, sid_levels=2, sid_codebook_size=2, sid_dedup_size=4
    )
    assert ("item_id_list" in train.inter_feat.columns) == (model == "SASRec")
    with caplog.at_level(logging.INFO):
        sids = build_semantic_ids(config, train)
    meta = sids.meta
    assert meta["items_content"] == 20
    assert meta["items_collaborative"] == 6
    assert meta["items_blank"] == 1
    assert "6 got collaborative vectors" in caplog.text
    assert "neither text nor training interactions" in caplog.text

    def first_code(token):
        return int(sids.codes[int(train.token2id("item_id", token)), 0])

    fruit = {first_code(f"a{i}") for i in range(10)}
    tools = {first_code(f"b{i}") for i in range(10)}
    assert len(fruit) == 1 and len(tools) == 1 and fruit != tools
    # items without text land with the family they are bought with
    assert {first_code(f"a_empty{i}") for i in range(3)} == fruit
    assert {first_code(f"b_empty{i}") for i in range(3)} == tools
    # every item, the lonely one included, has its own valid code
    assert (sids.codes[1:] >= 0).all()
    assert len(torch.unique(sids.codes[1:], dim=0)) == train.item_num - 1


def test_dedup_level_grows_for_identical_texts(tmp_path, caplog):
    items = {f"same{i}": "identical plastic widget" for i in range(40)}
    items.update({f"other{i}": f"unique {word} thing" for i, word in enumerate(FRUIT + TOOLS)})
    tokens = list(items)
    sequences = {
        f"user{u}": [tokens[(u * 7 + s) % len(tokens)] for s in range(8)] for u in range(30)
    }
    write_dataset(tmp_path, "dups", items, sequences)
    config, _, train = synthetic_split(
        tmp_path, "dups", sid_levels=2, sid_codebook_size=4, sid_collision="grow",
        sid_collaborative_weight=0.0,  # content only: nothing tells the 40 items apart
    )
    with caplog.at_level(logging.WARNING):
        sids = build_semantic_ids(config, train)
    assert sids.meta["largest_collision_group"] >= 40
    assert sids.level_sizes[-1] == sids.meta["largest_collision_group"] > 16
    assert sids.meta["dedup_grown"] is True
    assert "De-duplication level grown" in caplog.text
    same = torch.tensor([int(train.token2id("item_id", f"same{i}")) for i in range(40)])
    # identical items share every semantic code and differ in the last one, numbered by id
    assert len(torch.unique(sids.codes[same, :2], dim=0)) == 1
    order = torch.argsort(same)
    assert sids.codes[same[order], 2].tolist() == sorted(sids.codes[same, 2].tolist())
    assert len(torch.unique(sids.codes[1:], dim=0)) == train.item_num - 1


# ----------------------------------------------------------------------------- cache


def test_cache_hit_then_miss_on_changed_setting(ml100k, tmp_path, caplog):
    config, _, train = ml100k
    settings = with_settings(config, sid_cache=True, sid_cache_dir=str(tmp_path / "cache"))
    first = build_semantic_ids(settings, train)
    assert first.meta["cache_hit"] is False
    path = first.meta["cache_path"]
    assert os.path.isfile(path) and os.path.dirname(path) == str(tmp_path / "cache")
    saved = torch.load(path, weights_only=True)
    assert torch.equal(saved["codes"], first.codes)

    with caplog.at_level(logging.INFO):
        second = build_semantic_ids(settings, train)
    assert second.meta["cache_hit"] is True and second.meta["cache_path"] == path
    assert "cache hit" in caplog.text
    assert torch.equal(second.codes, first.codes) and second.level_sizes == first.level_sizes

    for changed in ({"sid_kmeans_iters": 21}, {"seed": 1}, {"sid_text_fields": ["movie_title"]}):
        third = build_semantic_ids(dict(settings, **changed), train)
        assert third.meta["cache_hit"] is False, changed
        assert third.meta["cache_path"] != path, changed

    # the default folder is <checkpoint_dir>/sid_cache; sid_cache=False writes nothing
    default = build_semantic_ids(with_settings(config, sid_cache=True), train)
    default_dir = os.path.join(config["checkpoint_dir"], "sid_cache")
    assert default.meta["cache_path"].startswith(default_dir)
    assert build_semantic_ids(config, train).meta["cache_path"] is None


def test_cache_key_follows_item_filtering(tmp_path):
    items = {f"i{n}": f"thing {word}" for n, word in enumerate(FRUIT + TOOLS)}
    tokens = list(items)
    sequences = {f"user{u}": [tokens[(u + s) % 20] for s in range(6)] for u in range(10)}
    sequences["user_rare"] = ["i0", "i1", "i2", "i3"]
    write_dataset(tmp_path, "filtered", items, sequences)
    paths = {}
    for collision, weight in (("grow", 0.0), ("split", 0.0), ("grow", 0.5)):
        for interval in (None, "[5,inf)"):
            config, _, train = synthetic_split(
                tmp_path, "filtered", sid_levels=2, sid_codebook_size=2, sid_cache=True,
                user_inter_num_interval=interval, sid_collision=collision,
                sid_collaborative_weight=weight,
            )
            paths[collision, weight, interval] = build_semantic_ids(config, train).meta[
                "cache_path"]
    # filtering users changes the training interactions only; texts and items stay: same key
    # as long as no interaction is read (content only, grow), a new key when they split
    # collision groups or are fused into the vectors
    assert paths["grow", 0.0, None] == paths["grow", 0.0, "[5,inf)"]
    assert paths["split", 0.0, None] != paths["split", 0.0, "[5,inf)"]
    assert paths["grow", 0.5, None] != paths["grow", 0.5, "[5,inf)"]
    config, _, train = synthetic_split(
        tmp_path, "filtered", sid_levels=2, sid_codebook_size=2, sid_cache=True,
        item_inter_num_interval="[4,inf)", sid_collision="grow", sid_collaborative_weight=0.0,
    )
    assert train.item_num < 21
    assert build_semantic_ids(config, train).meta["cache_path"] not in paths.values()


# ----------------------------------------------------------------------------- file backend


def write_tsv(path, tokens, vectors, skip=()):
    with open(path, "w") as f:
        f.write("# item token \t vector\n")
        for token, vector in zip(tokens, vectors):
            if token not in skip:
                f.write(token + "\t" + " ".join(f"{v:.6f}" for v in vector) + "\n")


def file_settings(config, path):
    return with_settings(
        config, sid_embedding="file", sid_embedding_file=None if path is None else str(path)
    )


def test_file_backend_tsv_and_npz(ml100k, tmp_path):
    config, _, train = ml100k
    tokens = list(train.field2id_token["item_id"][1:])
    vectors = np.random.default_rng(0).standard_normal((len(tokens), 12))
    order = np.random.default_rng(1).permutation(len(tokens))  # file order is free
    tsv = tmp_path / "emb.tsv"
    write_tsv(tsv, [tokens[i] for i in order], vectors[order])
    npz = tmp_path / "emb.npz"
    np.savez(
        npz,
        item_tokens=np.array(tokens + ["not_an_item"]),  # extra items are ignored
        embeddings=np.vstack([vectors, np.ones(12)]),
    )

    from_tsv = build_semantic_ids(file_settings(config, tsv), train)
    from_npz = build_semantic_ids(file_settings(config, npz), train)
    assert from_tsv.meta["items_content"] == 1682
    assert torch.equal(from_tsv.codes, from_npz.codes)
    # the default fuses the file's 12 dimensions with the collaborative ones; 0: the file alone
    assert from_tsv.meta["embedding_dim"] > 12 and from_tsv.meta["collaborative_weight"] == 0.5
    alone = build_semantic_ids(dict(file_settings(config, tsv), sid_collaborative_weight=0), train)
    assert alone.meta["embedding_dim"] == 12


def test_file_backend_errors(ml100k, tmp_path):
    config, _, train = ml100k
    tokens = list(train.field2id_token["item_id"][1:])
    vectors = np.random.default_rng(0).standard_normal((len(tokens), 4))

    missing = tmp_path / "missing.tsv"
    write_tsv(missing, tokens, vectors, skip={tokens[0], tokens[5], tokens[9]})
    with pytest.raises(ValueError, match=r"no vector for 3 of the 1682 items"):
        build_semantic_ids(file_settings(config, missing), train)

    ragged = tmp_path / "ragged.tsv"
    write_tsv(ragged, tokens, vectors)
    with open(ragged, "a") as f:
        f.write("extra_item\t1 2 3\n")
    with pytest.raises(ValueError, match=r"different sizes.*extra_item"):
        read_embedding_file(str(ragged))

    wrong_count = tmp_path / "count.npz"
    np.savez(wrong_count, item_tokens=np.array(tokens), embeddings=vectors[:-2])
    expected = r"shape \[len\(item_tokens\), d\] = \[1682, d\], got \[1680, 4\]"
    with pytest.raises(ValueError, match=expected):
        read_embedding_file(str(wrong_count))

    garbage = tmp_path / "garbage.tsv"
    garbage.write_text("a\t1 2\nb\tnot numbers\n")
    with pytest.raises(ValueError, match=r"lines \[2\]"):
        read_embedding_file(str(garbage))

    with pytest.raises(ValueError, match="needs sid_embedding_file"):
        build_semantic_ids(file_settings(config, None), train)


# ----------------------------------------------------------------------------- errors


def test_unknown_backend_and_quantizer(ml100k):
    config, _, train = ml100k
    expected = r"sid_embedding='bert' must be one of tfidf, sentence, file, collaborative"
    with pytest.raises(ValueError, match=expected):
        build_semantic_ids(with_settings(config, sid_embedding="bert"), train)
    with pytest.raises(ValueError, match=r"sid_quantizer='pq' must be one of rkmeans, rqvae"):
        build_semantic_ids(with_settings(config, sid_quantizer="pq"), train)


def test_unknown_field(ml100k):
    config, _, train = ml100k
    expected = r"'genre'.*Available item fields: \['movie_title', 'release_year', 'class'\]"
    with pytest.raises(ValueError, match=expected):
        build_semantic_ids(with_settings(config, sid_text_fields=["movie_title", "genre"]), train)


def test_codebook_larger_than_items(ml100k):
    config, _, train = ml100k
    expected = r"sid_codebook_size=2000 is larger than the number of items \(1682\)"
    with pytest.raises(ValueError, match=expected):
        build_semantic_ids(with_settings(config, sid_codebook_size=2000), train)


def test_collaborative_needs_the_training_split(ml100k):
    config, unsplit, _ = ml100k
    with pytest.raises(ValueError, match="training split"):
        build_semantic_ids(with_settings(config, sid_embedding="collaborative"), unsplit)
    # fused vectors and the split of collision groups (both default) read interactions too
    for settings in ({}, {"sid_collision": "grow"}, {"sid_collaborative_weight": 0.0}):
        with pytest.raises(ValueError, match="training split"):
            build_semantic_ids(with_settings(config, **settings), unsplit)
    # text alone needs no interactions: the unsplit dataset is fine with content-only vectors
    # and sid_collision=grow, and random codes never read interactions
    for settings in ({"sid_collision": "grow", "sid_collaborative_weight": 0.0},
                     {"sid_embedding": "random"}):
        sids = build_semantic_ids(with_settings(config, **settings), unsplit)
        assert len(torch.unique(sids.codes[1:], dim=0)) == 1682


def test_sentence_backend_without_package(ml100k):
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("sentence-transformers is installed: the missing-package error cannot occur")
    config, _, train = ml100k
    before = os.environ.get("HF_HUB_OFFLINE")
    with pytest.raises(RuntimeError, match="optional package sentence-transformers"):
        build_semantic_ids(with_settings(config, sid_embedding="sentence"), train)
    assert os.environ.get("HF_HUB_OFFLINE") == before  # offline flag only set while loading


def test_sentence_backend(ml100k):
    pytest.importorskip("sentence_transformers", reason="optional package not installed")
    config, _, train = ml100k
    try:
        sids = build_semantic_ids(with_settings(config, sid_embedding="sentence"), train)
    except RuntimeError as error:
        assert "not available locally" in str(error)
        pytest.skip(f"sentence model not available offline: {error}")
    assert sids.meta["backend"] == "sentence"
    assert len(torch.unique(sids.codes[1:], dim=0)) == 1682


# ----------------------------------------------------------------------------- command line


def test_parse_args():
    model, dataset, files, values = parse_args(
        ["--dataset=ml-100k", "--config_files=a.yaml b.yaml", "--sid_codebook_size=64",
         "--sid_text_fields=['movie_title']", "--sid_balanced=true", "--sid_cache_dir=/tmp/x"]
    )
    assert (model, dataset, files) == ("TIGER", "ml-100k", ["a.yaml", "b.yaml"])
    assert values == {
        "sid_codebook_size": 64,
        "sid_text_fields": ["movie_title"],
        "sid_balanced": True,
        "sid_cache_dir": "/tmp/x",
    }


def test_command_line_prints_diagnostics(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # RecBole's logger writes ./log
    # settings on the real command line must not leak in: main() reads only its argv
    monkeypatch.setattr("sys.argv", ["sid", "--sid_codebook_size=8"])
    sids = sid_main(
        ["--dataset=ml-100k", "--model=SASRec", f"--checkpoint_dir={tmp_path}",
         "--sid_codebook_size=16", "--sid_embedding_dim=32", "--sid_kmeans_iters=10"]
    )
    out = capsys.readouterr().out
    assert "Semantic IDs of ml-100k: 4 levels" in out
    assert sids.level_sizes[:3] == [16, 16, 16]
    assert "collision rate before dedup" in out and "largest collision group" in out
    assert f"{sids.meta['collision_rate']:.4f}" in out
    assert os.path.isfile(sids.meta["cache_path"])


# ----------------------------------------------------------------------------- Amazon Beauty


def amazon_beauty_sids(model="SASRec", **settings):
    """Semantic IDs of amazon-beauty's training split (cache off), or skip without the data."""
    if not (SHARED_DATASETS / "amazon-beauty" / "amazon-beauty.inter").is_file():
        pytest.skip(f"amazon-beauty not found under {SHARED_DATASETS}")
    config = Config(
        model=model,
        dataset="amazon-beauty",
        config_dict={"data_path": str(SHARED_DATASETS), "sid_cache": False, **settings},
    )
    return build_semantic_ids(config, create_dataset(config).build()[0])


@pytest.mark.slow
def test_amazon_beauty_default_settings():
    sids = amazon_beauty_sids()
    assert sids.level_sizes[:3] == [256, 256, 256]
    assert len(torch.unique(sids.codes[1:], dim=0)) == 12101
    assert sids.meta["seconds"] < 120
