"""Multi-process training on RecBole's distributed mode: gloo on CPU, codes built once, exact metrics.

The end-to-end tests start 2 CPU processes (torch.multiprocessing spawn) that meet over TCP on
localhost; see docs/distributed.md.
"""

import json
import math
import os
import socket

import pytest
import torch

from conftest import TINY, TINY_PROTOCOL, TINY_SID, load_script, make_tiny_dataset
from recbole_semprune import distributed
from recbole_semprune.config import Config
from recbole_semprune.distributed import DistributedSettingsError, check_settings, resolve_backend
from recbole_semprune.quick_start import distributed_settings, load_data_and_model, run
from recbole_semprune.utils import create_dataset, get_trainer, plugin_models

SMALL_SID = TINY_SID
# 121 users: 2 ranks get 61 each, RecBole's DistributedSampler pads with a duplicate user
N_USERS = 121


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def tiny_config(workdir, **extra):
    data_path = make_tiny_dataset(workdir / "data", n_users=N_USERS)
    return dict(
        TINY, **TINY_PROTOCOL, **SMALL_SID, data_path=data_path,
        checkpoint_dir=str(workdir / "saved"), **extra,
    )


# ---- settings, no processes started -----------------------------------------------------------
def test_settings_errors_say_what_is_wrong():
    assert check_settings(2, -1, 0, "5678") == 2
    assert check_settings(2, 4, 2, 29500) == 4
    with pytest.raises(DistributedSettingsError, match="world_size=1 is smaller than nproc=2"):
        check_settings(2, 1, 0, 5678)
    with pytest.raises(DistributedSettingsError, match=r"offset=3 with nproc=2 .* ranks 3...4"):
        check_settings(2, 4, 3, 5678)
    with pytest.raises(DistributedSettingsError, match=r"nproc=0 must be an int >= 1 \(processes on this machine\)"):
        check_settings(0, -1, 0, 5678)
    with pytest.raises(DistributedSettingsError, match="nproc='2' must be an int"):
        check_settings("2", -1, 0, 5678)
    with pytest.raises(DistributedSettingsError, match="not a TCP port"):
        check_settings(2, -1, 0, "http")


def test_backend_follows_the_device():
    assert resolve_backend("auto", use_cuda=False) == "gloo"
    assert resolve_backend(None, use_cuda=True) == "nccl"
    assert resolve_backend("gloo", use_cuda=True) == "gloo"
    with pytest.raises(DistributedSettingsError, match="dist_backend=nccl needs CUDA"):
        resolve_backend("nccl", use_cuda=False)
    with pytest.raises(DistributedSettingsError, match="not one of auto, gloo, nccl"):
        resolve_backend("mpi", use_cuda=False)


def test_dist_backend_default_and_single_process_unchanged(monkeypatch):
    monkeypatch.setattr("sys.argv", ["pytest"])
    config = Config(model="TIGER", dataset="ml-100k")
    assert config["dist_backend"] == "auto"
    assert config["single_spec"] and config["local_rank"] == 0


def test_run_takes_the_keys_from_arguments_dict_and_files(tmp_path):
    yaml_file = tmp_path / "dist.yaml"
    yaml_file.write_text("nproc: 2\nport: 29001\noffset: 0\n")
    settings = distributed_settings([str(yaml_file)], {"port": 29002}, nproc=None, ip=None)
    assert settings == {
        "nproc": 2, "world_size": 2, "ip": "localhost", "port": 29002, "group_offset": 0,
    }
    settings = distributed_settings([str(yaml_file)], None, nproc=3, world_size=6, group_offset=3)
    assert (settings["nproc"], settings["world_size"], settings["group_offset"]) == (3, 6, 3)
    with pytest.raises(DistributedSettingsError, match="world_size=2 is smaller than nproc=3"):
        run("TIGER", "tiny", config_dict={"nproc": 3, "world_size": 2})


def test_cli_reports_bad_settings_without_traceback(monkeypatch, capsys):
    run_recbole_semprune = load_script("run_recbole_semprune.py")
    monkeypatch.setattr(
        "sys.argv", ["run_recbole_semprune.py", "--model=TIGER", "--nproc=2", "--world_size=1"]
    )
    with pytest.raises(SystemExit) as exit_info:
        run_recbole_semprune.main()
    assert exit_info.value.code == 2
    assert "world_size=1 is smaller than nproc=2" in capsys.readouterr().err


# ---- two gloo processes ---------------------------------------------------------------------
def _share_codes_worker(rank, config_dict, out_dir):
    """One rank: build the codes (counting quantiser runs), then fail on purpose on rank 0."""
    from recbole_semprune.sid import tokenizer

    config = Config(model="TIGER", dataset="tiny", config_dict=dict(config_dict, local_rank=rank))
    dataset = create_dataset(config).build()[0]  # the training split, as a model receives it
    runs = []
    quantize = tokenizer._quantize
    tokenizer._quantize = lambda *args: runs.append(1) or quantize(*args)
    sids = tokenizer.build_semantic_ids(config, dataset)
    config["sid_codebook_size"] = 10_000  # more codes than items: rank 0 raises
    try:
        tokenizer.build_semantic_ids(config, dataset)
        error = None
    except Exception as exc:  # noqa: BLE001  (recorded for the test to check)
        error = f"{type(exc).__name__}: {exc}"
    report = {
        "backend": torch.distributed.get_backend(),
        "device": str(config["device"]),
        "quantizer_runs": len(runs),
        "codes": sids.codes.tolist(),
        "received_from_rank": sids.meta.get("received_from_rank"),
        "error": error,
    }
    torch.distributed.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


def test_semantic_ids_are_built_once_and_shared(workdir):
    """sid_cache off: rank 0 quantises, rank 1 only receives; a failure on rank 0 reaches
    rank 1 as an error instead of a hang."""
    config_dict = tiny_config(
        workdir, sid_cache=False, nproc=2, world_size=2, ip="localhost", port=free_port(),
        offset=0,
    )
    torch.multiprocessing.spawn(
        _share_codes_worker, args=(config_dict, str(workdir)), nprocs=2, join=True
    )
    rank0, rank1 = (json.loads((workdir / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["backend"] == rank1["backend"] == "gloo"
    assert rank0["device"] == rank1["device"] == "cpu"
    assert (rank0["quantizer_runs"], rank1["quantizer_runs"]) == (1, 0)
    assert (rank0["received_from_rank"], rank1["received_from_rank"]) == (None, 0)
    assert rank0["codes"] == rank1["codes"]
    assert "sid_codebook_size=10000 is larger than the number of items" in rank0["error"]
    assert rank1["error"].startswith("RuntimeError: Rank 0 failed to build the semantic IDs")
    assert "sid_codebook_size=10000" in rank1["error"]

    # and they are the codes one process builds
    from recbole_semprune.sid import build_semantic_ids

    single = Config(model="TIGER", dataset="tiny", config_dict=dict(tiny_config(workdir), sid_cache=False))
    train = create_dataset(single).build()[0]
    assert build_semantic_ids(single, train).codes.tolist() == rank0["codes"]


def _two_process_run(model, workdir, **extra):
    config_dict = tiny_config(workdir, state="INFO", **extra)
    result = run(model, "tiny", config_dict=config_dict, nproc=2, port=free_port())
    assert result is not None, "rank 0 returned no result"
    for split in ("best_valid_result", "test_result"):
        assert result[split] and all(math.isfinite(v) for v in result[split].values()), result
    return result


def _assert_single_process_metrics(result):
    """The checkpoint (written by rank 0 alone) reloads in one process, and one process
    evaluating those weights gets exactly the metrics the 2 processes reported together."""
    config, model, _, _, valid_data, test_data = load_data_and_model(result["saved_model_file"])
    assert config["single_spec"]
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    assert dict(trainer.evaluate(test_data, load_best_model=False)) == dict(result["test_result"])
    # epochs=1: the best validation result is that of these weights too
    valid = trainer.evaluate(valid_data, load_best_model=False)
    assert dict(valid) == dict(result["best_valid_result"])


def test_tiger_trains_on_two_cpu_processes_with_single_process_metrics(workdir):
    result = _two_process_run("TIGER", workdir)
    # the codes were built once, by rank 0 (rank 1 logs errors only, as in RecBole; that it
    # does not build them is test_semantic_ids_are_built_once_and_shared)
    logs = list((workdir / "log" / "TIGER").glob("*.log"))
    assert len(logs) == 2, logs
    texts = [log.read_text() for log in logs]
    assert sum(text.count("Building semantic IDs") for text in texts) == 1
    assert not any("Semantic IDs: cache hit" in text for text in texts)
    assert len(list((workdir / "saved" / "sid_cache").glob("*.pt"))) == 1
    assert len(list((workdir / "saved").glob("*.pth"))) == 1
    _assert_single_process_metrics(result)


# what a model needs beyond TINY + SMALL_SID to run on the tiny dataset (histories of <= 10)
MODEL_SETTINGS = {
    "RASTP": {"n_layers": 2},
    "STAMPSID": {"n_layers": 3, "prune_layer": 2},
    "Rec2PM": {"segment_len": 3, "mem_tokens": 2},
}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(plugin_models()))
def test_every_plugin_model_on_two_cpu_processes(model, workdir):
    _assert_single_process_metrics(
        _two_process_run(model, workdir, **MODEL_SETTINGS.get(model, {}))
    )


def test_distributed_helpers_are_plain_calls_in_one_process():
    assert not distributed.is_distributed()
    assert distributed.share_from_rank0(lambda: 41 + 1, "the answer") == 42
