"""One model of a benchmark, built as a run builds it (the budget in its config), fitted and
evaluated: ``python -m recbole_semprune.benchmark.worker SPEC.json``, or :func:`execute`."""

import hashlib
import json
import os
import platform
import sys
import warnings
from time import perf_counter, process_time

import numpy as np
import torch

from recbole_semprune.benchmark.common import (
    build_config, read_json, remove, torch_threads, write_json,
)
from recbole_semprune.data.batching import LengthBucketBatchSampler, use_length_buckets

SPEC_VERSION = 2
TRAINED_FILE = "trained.json"  # the training figures, written before evaluation starts
PROGRESS_SECONDS = 30.0  # a progress line about this often (the benchmark's live display)
PRUNING_FIGURES = ("tokens_per_history", "kept_tokens_per_history", "kept_fraction",
                   "padded_length", "pruned_length")


def _user_order(loader):
    """User ids of an evaluation loader in the order it yields them (first occurrence)."""
    dataset = loader._dataset
    if hasattr(loader, "uid_list"):  # general full-sort loader: one entry per user, sorted
        uids = np.asarray(loader.uid_list)
    else:  # sequential / sampled loaders iterate the dataset's rows in order
        uids = dataset.inter_feat[dataset.uid_field].numpy()
    _, first = np.unique(uids, return_index=True)
    return uids[np.sort(first)]


def first_users_loader(loader, max_users):
    """``(loader, user_ids)``: a new evaluation loader of the first ``max_users`` users that
    ``loader`` yields (the same users for every model), or ``loader`` itself when it has no more."""
    users = _user_order(loader)
    if max_users is None or len(users) <= max_users:
        return loader, users
    dataset = loader._dataset
    uids = dataset.inter_feat[dataset.uid_field].numpy()
    rows = torch.from_numpy(np.flatnonzero(np.isin(uids, users[:max_users])))
    restricted = type(loader)(loader.config, dataset.copy(dataset.inter_feat[rows]),
                              loader._sampler, shuffle=False)
    if isinstance(getattr(loader, "batch_sampler", None), LengthBucketBatchSampler):
        use_length_buckets(restricted, loader.config, shuffle=False)  # as the full loader
    return restricted, users[:max_users]


def device_name(device):
    """The GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip()
                        for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def epoch_figures(stats, budget, steps_per_epoch):
    """The training columns from the trainer's ``epoch_stats``."""
    steps, seconds, tokens, cpu = (sum(s[k] for s in stats)
                                   for k in ("steps", "seconds", "tokens", "cpu_seconds"))
    slots = sum(s.get("token_slots", s["tokens"]) for s in stats)
    per_step, measured = seconds / steps if steps else float("nan"), budget["mode"] == "epochs"
    figures = {
        "train_steps": steps, "train_seconds": seconds, "train_seconds_per_step": per_step,
        "train_seconds_per_epoch": seconds / len(stats) if measured else per_step * steps_per_epoch,
        "epoch_time_source": "measured" if measured else "extrapolated", "train_tokens": tokens,
        "tokens_per_second": tokens / seconds if seconds > 0 else float("nan"),
        "padding_share": 1 - tokens / slots if slots else float("nan"),
        "peak_memory_mb": max(s["peak_memory_mb"] for s in stats), "train_cpu_seconds": cpu,
        "train_cpu_seconds_per_step": cpu / steps if steps else float("nan"),
    }
    for key in PRUNING_FIGURES:  # a pruning model's kept tokens, averaged over steps
        weighted = [(s[key], s["steps"]) for s in stats if key in s]
        if weighted:
            figures[key] = sum(v * n for v, n in weighted) / max(sum(n for _, n in weighted), 1)
    return figures


def run_model(spec):
    """Build, fit and evaluate ``spec["model"]``; returns the result (docs/benchmarks.md), after
    writing the training figures alone to ``trained.json``."""
    import recbole
    from recbole.utils import init_logger, init_seed

    from recbole_semprune.checkpoint import load_resume_state
    from recbole_semprune.quick_start import _build
    from recbole_semprune.trainer import PeakMemory

    config = build_config(spec)
    if spec.get("init_logger"):
        init_logger(config)
    last_file = spec.get("last_checkpoint")
    resume = (last_file, load_resume_state(last_file, config)) if last_file and os.path.exists(
        last_file) else None
    init_seed(config["seed"], config["reproducibility"])
    start = perf_counter()
    _, train_data, valid_data, test_data, model, trainer = _build(config, resume=resume)
    build_seconds = perf_counter() - start
    if not hasattr(trainer, "epoch_stats"):
        raise RuntimeError(f"{spec['model']} trains with {type(trainer).__name__}, outside "
                           "RecBole's Trainer family: it records no per-epoch figures to time "
                           "it by")
    trainer.last_checkpoint_file, trainer.progress_seconds = last_file, PROGRESS_SECONDS

    with PeakMemory(config["device"]) as before:  # an empty window: memory held before training
        pass
    load_start = _load_average()
    trainer.fit(train_data, valid_data if spec.get("valid") else None, saved=False,
                show_progress=config["show_progress"])
    stats = [dict(s) for s in trainer.epoch_stats]
    if not stats:
        raise RuntimeError(f"{spec['model']}: the trainer ran no training epoch")
    figures = epoch_figures(stats, spec["budget"], len(train_data))
    figures.update(utilisation(model, train_data, figures, config["device"]))
    device = torch.device(config["device"])
    reported = set(spec.get("config_dict") or {}) | set(spec.get("report_keys") or [])
    result = {
        "model": spec["model"], "model_class": spec.get("model_class", spec["model"]),
        "status": "trained", "dataset": config["dataset"], "budget": spec["budget"],
        "params": sum(p.numel() for p in model.parameters()), "steps_per_epoch": len(train_data),
        **figures, "memory_before_train_mb": before.peak_mb,
        "load_average": [load_start, _load_average()],  # 1-min load at the start / end of training
        "cpu_count": os.cpu_count(), "build_seconds": build_seconds, "epoch_stats": stats,
        "seed": config["seed"], "device": str(device), "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
        "recbole_version": recbole.__version__, "python_version": platform.python_version(),
        "trainer": f"{type(trainer).__module__}.{type(trainer).__name__}",
        "valid_metric": str(config["valid_metric"]).lower(),
        "config": json.loads(json.dumps({k: config[k] for k in sorted(reported) if k in config},
                                        default=str)),
        "resumed_at_epoch": trainer.start_epoch if resume else None,
    }
    if trainer.valid_stats:
        curve = [{"epoch": v["epoch"], "train_seconds": v["train_seconds"],
                  "result": {k: float(x) for k, x in v["result"].items()}}
                 for v in trainer.valid_stats]
        result.update(valid_seconds=sum(v["seconds"] for v in trainer.valid_stats),
                      valid_result=curve[-1]["result"], valid_curve=curve)
    write_json(os.path.join(os.path.dirname(spec["result_path"]), TRAINED_FILE), result)

    eval_loader, users = first_users_loader(test_data, spec.get("eval_max_users"))
    with PeakMemory(config["device"]) as eval_memory:
        begin = perf_counter()
        test_result = trainer.evaluate(eval_loader, load_best_model=False,
                                       show_progress=config["show_progress"])
        eval_seconds = perf_counter() - begin
    tokens = "\n".join(map(str, test_data._dataset.id2token(test_data._dataset.uid_field, users)))
    result.update({
        "status": "ok", "eval_users": int(len(users)),
        "eval_users_total": int(len(_user_order(test_data))),
        "eval_users_fingerprint": hashlib.sha1(tokens.encode()).hexdigest()[:12],
        "eval_seconds": eval_seconds, "eval_seconds_per_user": eval_seconds / max(len(users), 1),
        "eval_peak_memory_mb": eval_memory.peak_mb,
        "test_result": {k: float(v) for k, v in test_result.items()},
    })
    return result


def utilisation(model, train_data, figures, device, n_batches=2):
    """The model's training FLOPs per second (FlopCounterMode over ``n_batches`` batches, x
    steps / CPU seconds on CPU, wall seconds on GPU), the machine's dense float32 matmul rate
    timed the same way (2048 x 2048 products for 2 s), and their ratio."""
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device(device)
    cuda = device.type == "cuda"
    counts = []
    model.train()
    for _, batch in zip(range(n_batches), train_data):
        with FlopCounterMode(display=False) as counter:
            loss = model.calculate_loss(batch.to(device))
            loss = sum(loss) if isinstance(loss, tuple) else loss
            if loss.requires_grad:
                loss.backward()
        model.zero_grad(set_to_none=True)
        counts.append(counter.get_total_flops())
    model_rate = float(np.mean(counts)) * figures["train_steps"] / figures[
        "train_seconds" if cuda else "train_cpu_seconds"]
    size, a = 2048, torch.randn(2048, 2048, device=device)
    clock, sync = ((perf_counter, lambda: torch.cuda.synchronize(device)) if cuda
                   else (process_time, lambda: None))
    torch.mm(a, a)
    sync()
    runs, begin, wall = 0, clock(), perf_counter()
    while perf_counter() - wall < 2.0:
        torch.mm(a, a)
        runs += 1
    sync()
    matmul_rate = 2 * size**3 * runs / (clock() - begin)
    return {"flops_per_step": float(np.mean(counts)), "model_gflops_per_second": model_rate / 1e9,
            "matmul_gflops_per_second": matmul_rate / 1e9, "utilisation": model_rate / matmul_rate}


def _load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # no load average on this OS
        return None


def execute(spec):
    """Runs the model of ``spec``, writes its result, removes its resume state."""
    with torch_threads(spec.get("threads")):  # in-process runs keep the caller's setting
        write_json(spec["result_path"], run_model(spec))
    remove([spec["last_checkpoint"]] if spec.get("last_checkpoint") else [])


def main(argv=None):
    """Subprocess entry: ``python -m recbole_semprune.benchmark.worker SPEC.json``."""
    argv = sys.argv[1:] if argv is None else argv
    spec = read_json(argv[0]) if len(argv) == 1 else None
    if spec is None or spec.get("version") != SPEC_VERSION:
        print(f"usage: python -m recbole_semprune.benchmark.worker SPEC.json (spec version "
              f"{SPEC_VERSION})", file=sys.stderr)
        return 2
    # RecBole's pandas / torch.cuda.amp deprecation warnings say nothing about the benchmark
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")
    execute(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
