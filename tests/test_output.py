"""Clean output: no FutureWarnings, plain floats in the result lines, a progress bar for the
semantic-ID build, and no -inf items from full_sort_topk when k exceeds the beam."""

import subprocess
import sys
import warnings

import pytest
import torch
import yaml

from conftest import REPO, TINY, TINY_PROTOCOL, build_pruning_net, make_tiny_dataset


def test_a_run_prints_no_future_warning_and_plain_floats(workdir):
    """A real process (pytest's own warning filters would hide what a user sees)."""
    settings = dict(TINY, **TINY_PROTOCOL, state="INFO", n_dec_layers=1, sid_levels=2,
                    sid_codebook_size=4, beam_size=10, show_progress=True,
                    data_path=make_tiny_dataset(workdir / "data"))
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(settings))
    result = subprocess.run(
        [sys.executable, str(REPO / "run_recbole_semprune.py"), "--model=TIGER",
         "--dataset=tiny", "--config_files=tiny.yaml"],
        capture_output=True, text=True, cwd=workdir,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Warning" not in output
    (test_line,) = [line for line in output.splitlines() if "test result" in line]
    assert "np.float64" not in test_line and "'ndcg@10': " in test_line
    assert "Semantic IDs" in output and "3/3" in output  # the build's progress bar


def test_recbole_future_warnings_are_filtered_only_from_recbole():
    import pandas as pd

    from recbole_semprune import compat

    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        compat.silence_recbole_future_warnings()
        frame = pd.DataFrame({"a": [1.0, None]})
        code = compile("frame['a'].fillna(value=0, inplace=True)", "x.py", "exec")
        exec(code, {"__name__": "recbole.data.dataset.dataset", "frame": frame})
        recbole_warnings = len(caught)
        exec(code, {"__name__": "my_project", "frame": pd.DataFrame({"a": [1.0, None]})})
    assert recbole_warnings == 0
    if tuple(int(part) for part in pd.__version__.split(".")[:2]) >= (2, 2):
        assert len(caught) == 1  # pandas warns there: the same call outside RecBole still shows


@pytest.fixture
def tiger(tiny_data):
    net, _, test_loader = build_pruning_net("TIGER", tiny_data, beam_size=6, topk=[5])
    return net, test_loader


def test_full_sort_topk_beyond_the_beam_warns_and_widens(tiger):
    from recbole.utils.case_study import full_sort_topk

    net, test_loader = tiger
    users = test_loader.dataset.inter_feat[test_loader.dataset.uid_field][:4].numpy()
    with pytest.warns(UserWarning, match="k=12 is larger than TIGER's beam_size=6"):
        scores, items = full_sort_topk(users, net, test_loader, k=12)
    assert torch.isfinite(scores).all() and (items > 0).all()
    assert net.beam_size == 6  # restored
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores, _ = full_sort_topk(users, net, test_loader, k=6)
    assert torch.isfinite(scores).all()
