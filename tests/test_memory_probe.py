"""scripts/rec2pm_memory_probe.py: does a Rec2PM checkpoint's memory matter for its users?"""

import pytest
import torch

from conftest import REC2PM_SMALL, load_script
from recbole_semprune.quick_start import run_recbole_semprune

SMALL = REC2PM_SMALL


@pytest.fixture(scope="module")
def script():
    return load_script("scripts/rec2pm_memory_probe.py")


def test_own_memory_rows_are_recboles_test_result(script, tiny_data):
    rec2pm_run = run_recbole_semprune(model="Rec2PM", dataset="tiny", config_dict=dict(tiny_data, **SMALL))
    rows = script.main([rec2pm_run["saved_model_file"]])
    (name, n, spread, recall, ndcg, recall_perm, ndcg_perm), folded = rows
    assert name == "all" and n == 120  # every tiny user has one test row
    # the probe ranks with recommend(); RecBole's evaluator with full_sort_predict: same numbers
    assert recall == pytest.approx(rec2pm_run["test_result"]["recall@10"], abs=1e-4)
    assert ndcg == pytest.approx(rec2pm_run["test_result"]["ndcg@10"], abs=1e-4)
    assert folded[0] == "with a folded segment" and 2 <= folded[1] <= n
    assert folded[2] > 0  # the memories differ between users


def test_permutation_moves_memories_only_among_folded_users(script):
    memory = torch.arange(6 * 2 * 3, dtype=torch.float).view(6, 2, 3)
    n_segments = torch.tensor([0, 2, 1, 0, 3, 1])
    state = script.Rec2PMState(
        memory=memory, memory_mask=torch.ones(6, 2, dtype=torch.bool),
        tail=torch.zeros(6, 1, dtype=torch.long), pending=torch.zeros(6, 2, dtype=torch.long),
        pending_len=torch.zeros(6, dtype=torch.long), n_segments=n_segments,
    )
    shuffled, folded = script.permute_memories(state, seed=3)
    assert folded.tolist() == [1, 2, 4, 5]
    assert torch.equal(shuffled.memory[[0, 3]], memory[[0, 3]])
    moved = shuffled.memory[folded]
    sources = [int((memory == row).all(-1).all(-1).nonzero()) for row in moved]
    assert sorted(sources) == [1, 2, 4, 5] and sources != [1, 2, 4, 5]
    assert torch.equal(state.memory, memory)  # the input state is not changed
    with pytest.raises(script.ProbeError, match="1 users have a folded segment"):
        script.permute_memories(state._replace(n_segments=torch.tensor([0, 0, 1, 0, 0, 0])))


def test_other_models_are_refused(script, tiny_data):
    result = run_recbole_semprune(model="DecoderOnlySID", dataset="tiny",
                                  config_dict=dict(tiny_data, sid_levels=2, sid_codebook_size=8, beam_size=10))
    with pytest.raises(script.ProbeError, match="holds a DecoderOnlySID, not a Rec2PM"):
        script.probe(result["saved_model_file"])
