import os
from collections import namedtuple
from pathlib import Path

import pytest

import recbole_semprune  # noqa: F401  (applies the compat shims before RecBole is used)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

# Small, fast settings for end-to-end runs in tests.
TINY = {
    "epochs": 1,
    "show_progress": False,
    "state": "WARNING",
    "hidden_size": 16,
    "inner_size": 32,
    "n_layers": 1,
    "n_heads": 2,
    "train_batch_size": 512,
    "eval_batch_size": 512,
    "reproducibility": True,
    "seed": 2020,
}


# The model sizes above as command-line flags (benchmark, results mode, latency).
TINY_FLAGS = [f"--{key}={TINY[key]}" for key in ("hidden_size", "inner_size", "n_layers", "n_heads")]
# Semantic IDs and beam of every SID model in the tests; TINY_SID adds a one-layer decoder,
# REC2PM_SMALL Rec2PM's segments and memory.
SID_SMALL = {"sid_levels": 2, "sid_codebook_size": 8, "beam_size": 10}
TINY_SID = dict(SID_SMALL, n_dec_layers=1)
REC2PM_SMALL = dict(SID_SMALL, segment_len=3, mem_tokens=2)


@pytest.fixture
def shared_datasets():
    if not (SHARED_DATASETS / "amazon-beauty" / "amazon-beauty.inter").is_file():
        pytest.skip(f"shared datasets not found at {SHARED_DATASETS}")
    return str(SHARED_DATASETS)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in a temporary folder, so RecBole's log/ and saved/ land there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["pytest"])
    return tmp_path


def write_atomic(folder, name, suffix, header, rows):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}.{suffix}"), "w", encoding="utf-8") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(str(v) for v in row) + "\n")


TINY_PROTOCOL = {
    "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "title", "genre"]},
    "sid_text_fields": ["title", "genre"],
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
    "MAX_ITEM_LIST_LENGTH": 10,
    "train_neg_sample_args": None,
    "metrics": ["Recall", "NDCG", "MRR", "Hit"],
    "topk": [5, 10],
    "valid_metric": "NDCG@10",
}


def load_script(path):
    """The module of a script of the repository (``path`` relative to its root)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(path).stem, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tiny_dataset(root, name="tiny", n_users=120, n_items=60, length=12, seed=0):
    """Atomic files of a small learnable dataset: items belong to 6 genres with genre words in
    their titles, and each user mostly walks through the items of one genre in order."""
    import random

    rng = random.Random(seed)
    genres = ["jazz", "rock", "folk", "opera", "techno", "blues"]
    items = [f"i{k}" for k in range(n_items)]
    genre_of = {item: genres[k % len(genres)] for k, item in enumerate(items)}
    words = ["red", "blue", "old", "new", "live", "best", "deep", "soft"]
    item_rows = [
        (item, f"{genre_of[item]} {rng.choice(words)} {rng.choice(words)} vol {k}", genre_of[item])
        for k, item in enumerate(items)
    ]
    inter_rows = []
    for u in range(n_users):
        genre = genres[u % len(genres)]
        pool = [item for item in items if genre_of[item] == genre]
        start = rng.randrange(len(pool))
        for t in range(length):
            item = pool[(start + t) % len(pool)] if rng.random() < 0.8 else rng.choice(items)
            inter_rows.append((f"u{u}", item, 1000 * u + t))
    folder = os.path.join(root, name)
    write_atomic(folder, name, "inter", ["user_id:token", "item_id:token", "timestamp:float"], inter_rows)
    write_atomic(folder, name, "item", ["item_id:token", "title:token_seq", "genre:token"], item_rows)
    return str(root)


@pytest.fixture
def tiny_data(workdir):
    """``config_dict`` entries for a run on the tiny dataset (data in the temporary folder)."""
    data_path = make_tiny_dataset(workdir / "data")
    return dict(TINY, **TINY_PROTOCOL, data_path=data_path, checkpoint_dir=str(workdir / "saved"))


def stepwise_log_probs(net, seq, seq_len, codes):
    """Sequence log-probability of ``codes`` [B, L] through the model's KV-cached generation
    path, one level at a time (what beam search scores)."""
    import torch

    state, step, _ = net.generation_state(seq, seq_len)
    total = torch.zeros(len(codes))
    for level in range(net.n_levels):
        log_probs, state = step(state, codes[:, :level], level)
        total += log_probs.gather(1, codes[:, level : level + 1]).squeeze(1)
    return total


# Sizes of the pruning tests (test_pruning, test_stamp): 3 layers, pruning after the 2nd.
PRUNING_SMALL = dict(TINY_SID, n_layers=3, prune_layer=2)
# backbone key -> the unpruned model of that backbone
BACKBONES = {"tiger": "TIGER", "decoder_only": "DecoderOnlySID"}


Tiny = namedtuple("Tiny", "config dataset train valid test model trainer")


def build_tiny(model, settings, **overrides):
    """What a run builds for ``model`` on the tiny dataset, as a :class:`Tiny` (config,
    dataset, the three loaders, model, trainer): ``settings`` (the :func:`tiny_data` dict,
    often with sizes such as :data:`TINY_SID`) and then ``overrides`` are its config dict."""
    from recbole_semprune.config import Config
    from recbole_semprune.quick_start import _build

    config = Config(model=model, dataset="tiny", config_dict={**settings, **overrides})
    return Tiny(config, *_build(config))


def build_pruning_net(model, tiny_data, **overrides):
    """``(model in eval mode, train loader, test loader)`` at :data:`PRUNING_SMALL` sizes."""
    built = build_tiny(model, {**tiny_data, **PRUNING_SMALL}, **overrides)
    return built.model.eval(), built.train, built.test


def reload_and_evaluate(saved_model_file, monkeypatch):
    """Test metrics of a checkpoint reloaded by ``load_data_and_model``, which must take the
    semantic IDs from the checkpoint (rebuilding them fails the test)."""
    from recbole_semprune.quick_start import load_data_and_model
    from recbole_semprune.utils import get_trainer

    def no_rebuild(*args, **kwargs):
        raise AssertionError("semantic IDs were rebuilt")

    monkeypatch.setattr("recbole_semprune.model.sid_recommender.build_semantic_ids", no_rebuild)
    config, net, _, _, _, test_data = load_data_and_model(saved_model_file)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    return trainer.evaluate(test_data, load_best_model=False)
