"""One model of a benchmark: build, train under the budget, evaluate, return a JSON-able dict.

The parent (:mod:`recbole_semprune.benchmark.cli`) runs every model in a fresh process::

    python -m recbole_semprune.benchmark.worker SPEC.json

which reads the spec, calls :func:`run_model` and writes the result next to it
(``spec["result_path"]``). :func:`run_model` also works in-process (tests, ``--in_process``),
where peak memory is that of the shared process.

The model, dataset, splits and trainer are built exactly as a run builds them
(:func:`recbole_semprune.quick_start._build`), and training goes through the trainer's own
``fit``: the benchmark only bounds the budget (a train loader cut to ``max_steps`` batches, or
``epochs`` full epochs), switches off the best-model checkpoint and early stopping, and reads
the figures the plugin :class:`~recbole_semprune.trainer.Trainer` records per epoch
(``epoch_stats``) and per validation (``valid_stats``).

The trainer writes its resume state to ``spec["last_checkpoint"]`` after every epoch; a worker
that finds that file continues the interrupted model from it (the parent removes it unless
``--resume`` asks for that), and :func:`finish` removes it once the result is written.
"""

import contextlib
import hashlib
import json
import os
import platform
import sys
import warnings
from time import perf_counter, process_time

import numpy as np
import torch

from recbole_semprune.data.batching import LengthBucketBatchSampler, use_length_buckets

SPEC_VERSION = 1
TRAINED_FILE = "trained.json"  # the training figures, written before evaluation starts


class StepBudgetLoader:
    """A train loader that yields exactly ``steps`` batches per pass.

    When ``steps`` exceeds the loader's length it starts the loader again (a new shuffled pass),
    so that the model always takes ``steps`` optimisation steps. Every other attribute is the
    wrapped loader's, so the trainer sees the same dataset, sampler and flags.
    """

    def __init__(self, loader, steps):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.loader = loader
        self.steps = steps

    def __iter__(self):
        produced = 0
        while produced < self.steps:
            passed = 0
            for batch in self.loader:
                passed += 1
                produced += 1
                yield batch
                if produced >= self.steps:
                    return
            if passed == 0:
                raise RuntimeError("the train loader yields no batch: nothing to train on")

    def __len__(self):
        return self.steps

    def __getattr__(self, name):
        if name == "loader":  # not yet set (e.g. during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)


class ProgressLoader:
    """A train loader that prints a progress line about every ``every_seconds`` (and at the
    end of each pass): ``progress: epoch E, step K/N, S s/step, ETA T`` for the whole budget.
    The benchmark echoes worker output with the model's name, so this is its live display."""

    def __init__(self, loader, epochs, every_seconds=30.0, out=None, start_epoch=0):
        self.loader = loader
        self.epochs = epochs
        self.every_seconds = every_seconds
        self.out = out
        self.epoch = self.start_epoch = start_epoch  # a resumed run starts further on
        self.started = None

    def __iter__(self):
        total = len(self.loader) * self.epochs
        self.started = self.started or perf_counter()
        last = perf_counter()
        for step, batch in enumerate(self.loader, 1):
            yield batch
            now = perf_counter()
            if now - last >= self.every_seconds or step == len(self.loader):
                last = now
                done = self.epoch * len(self.loader) + step
                per_step = (now - self.started) / (done - self.start_epoch * len(self.loader))
                print(
                    f"progress: epoch {self.epoch + 1}/{self.epochs}, step {step}/"
                    f"{len(self.loader)}, {per_step:.2f} s/step (wall, evaluation included), "
                    f"ETA of training {per_step * (total - done):.0f} s",
                    file=self.out or sys.stdout, flush=True,
                )
        self.epoch += 1

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)


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
    """The evaluation loader restricted to the first ``max_users`` users it yields.

    Deterministic (evaluation loaders do not shuffle), so every model of a benchmark sees the
    same users. Returns ``(loader, user_ids)``; the original loader when it has no more users.
    """
    users = _user_order(loader)
    if max_users is None or len(users) <= max_users:
        return loader, users
    keep = users[:max_users]
    dataset = loader._dataset
    rows = np.flatnonzero(np.isin(dataset.inter_feat[dataset.uid_field].numpy(), keep))
    subset = dataset.copy(dataset.inter_feat[torch.from_numpy(rows)])
    restricted = type(loader)(loader.config, subset, loader._sampler, shuffle=False)
    if isinstance(getattr(loader, "batch_sampler", None), LengthBucketBatchSampler):
        use_length_buckets(restricted, loader.config, shuffle=False)  # as the full loader
    return restricted, keep


def _users_fingerprint(dataset, uids):
    tokens = dataset.id2token(dataset.uid_field, uids)
    return hashlib.sha1("\n".join(map(str, tokens)).encode("utf-8")).hexdigest()[:12]


@contextlib.contextmanager
def clean_argv():
    """Hide this process's command line from RecBole's Config (it parses every ``--k=v``)."""
    saved = sys.argv
    sys.argv = [saved[0] if saved else "recbole_semprune.benchmark"]
    try:
        yield
    finally:
        sys.argv = saved


def device_name(device):
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_config(spec):
    """The plugin Config of one benchmark model (command line hidden, overrides as a dict)."""
    from recbole_semprune.config import Config

    with clean_argv():
        return Config(
            model=spec.get("model_class", spec["model"]),
            dataset=spec["dataset"],
            config_file_list=spec.get("config_files") or None,
            config_dict=dict(spec.get("config_dict") or {}),
        )


def _epoch_figures(stats, budget, steps_per_epoch):
    steps = sum(s["steps"] for s in stats)
    seconds = sum(s["seconds"] for s in stats)
    tokens = sum(s["tokens"] for s in stats)
    slots = sum(s.get("token_slots", s["tokens"]) for s in stats)
    per_step = seconds / steps if steps else float("nan")
    if budget["mode"] == "epochs":
        per_epoch, source = seconds / len(stats), "measured"
    else:
        per_epoch, source = per_step * steps_per_epoch, "extrapolated"
    figures = {
        "train_steps": steps,
        "train_seconds": seconds,
        "train_seconds_per_step": per_step,
        "train_seconds_per_epoch": per_epoch,
        "epoch_time_source": source,
        "train_tokens": tokens,
        "tokens_per_second": tokens / seconds if seconds > 0 else float("nan"),
        "padding_share": 1 - tokens / slots if slots else float("nan"),
        "peak_memory_mb": max(s["peak_memory_mb"] for s in stats),
    }
    # a pruning model's kept tokens (its pop_epoch_stats), averaged over steps
    for key in ("tokens_per_history", "kept_tokens_per_history", "kept_fraction",
                "padded_length", "pruned_length"):
        weighted = [(s[key], s["steps"]) for s in stats if key in s]
        if weighted:
            figures[key] = sum(v * n for v, n in weighted) / max(sum(n for _, n in weighted), 1)
    return figures


def run_model(spec, on_trained=None):
    """Build, train and evaluate ``spec["model"]``; returns the result dict (see the docs).

    ``on_trained(result)``, if given, receives the training figures before evaluation starts,
    so that a model whose evaluation fails (or is killed) still reports its training cost.

    ``spec``: ``model``, ``dataset``, ``config_files``, ``config_dict`` (as RecBole's Config
    takes them), ``budget`` (``{"mode": "epochs" | "max_steps", "value": N}``),
    ``eval_max_users``, ``valid``, ``threads`` (torch intra-op threads, None = torch's
    default), ``report_keys`` (config keys copied into the result), ``init_logger``.
    """
    budget = spec["budget"]
    if budget["mode"] not in ("epochs", "max_steps") or int(budget["value"]) < 1:
        raise ValueError(f"bad budget {budget!r}: mode epochs or max_steps, value >= 1")
    threads = torch.get_num_threads()
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    try:
        return _run_model(spec, budget, on_trained)
    finally:
        torch.set_num_threads(threads)  # in-process runs leave the caller's setting as it was


def _run_model(spec, budget, on_trained):
    from recbole.utils import init_logger, init_seed

    from recbole_semprune.checkpoint import load_resume_state
    from recbole_semprune.quick_start import _build
    from recbole_semprune.trainer import PeakMemory

    config = build_config(spec)
    if spec.get("init_logger"):
        init_logger(config)
    last_file = spec.get("last_checkpoint")
    resume = None
    if last_file and os.path.exists(last_file):  # an interrupted run of this very spec
        resume = (last_file, load_resume_state(last_file, config))
    init_seed(config["seed"], config["reproducibility"])

    start = perf_counter()
    _, train_data, valid_data, test_data, model, trainer = _build(config, resume=resume)
    build_seconds = perf_counter() - start
    if not hasattr(trainer, "epoch_stats"):
        raise RuntimeError(
            f"{spec['model']} trains with {type(trainer).__module__}.{type(trainer).__name__}, "
            "which does not record epoch_stats (recbole_semprune.trainer.Trainer does): the "
            "benchmark cannot time it."
        )

    steps_per_epoch = len(train_data)
    if budget["mode"] == "epochs":
        epochs, loader = int(budget["value"]), train_data
    else:
        epochs, loader = 1, StepBudgetLoader(train_data, int(budget["value"]))
    loader = ProgressLoader(loader, epochs, start_epoch=trainer.start_epoch)
    # a fixed budget: every epoch trains, validation (if asked) never stops the run early
    trainer.epochs = epochs
    trainer.stopping_step = epochs + 1
    trainer.eval_step = 1
    trainer.last_checkpoint_file = last_file

    with PeakMemory(config["device"]) as before:  # an empty window: memory held before training
        pass
    load_start = _load_average()
    trainer.fit(
        loader,
        valid_data if spec.get("valid") else None,
        verbose=True,
        saved=False,
        show_progress=config["show_progress"],
    )
    load_end = _load_average()
    validations = trainer.valid_stats
    stats = [dict(s) for s in trainer.epoch_stats]
    if not stats:
        raise RuntimeError(f"{spec['model']}: the trainer ran no training epoch")
    figures = _epoch_figures(stats, budget, steps_per_epoch)
    # CPU time of this process (all its threads) while training: unlike wall time it does not
    # grow while other processes hold the CPU, so it compares models better on a shared machine
    train_cpu_seconds = sum(s["cpu_seconds"] for s in stats)
    figures["train_cpu_seconds"] = train_cpu_seconds
    figures.update(utilisation(model, train_data, figures, config["device"], spec.get("flop_batches", 2)))
    figures["train_cpu_seconds_per_step"] = train_cpu_seconds / figures["train_steps"]
    if budget["mode"] == "max_steps" and figures["train_steps"] != int(budget["value"]):
        raise RuntimeError(
            f"{spec['model']}: trained {figures['train_steps']} steps instead of "
            f"max_steps={budget['value']}"
        )

    import recbole

    device = torch.device(config["device"])
    reported_keys = set(spec.get("config_dict") or {}) | set(spec.get("report_keys") or [])
    result = {
        "model": spec["model"],
        "model_class": spec.get("model_class", spec["model"]),
        "status": "trained",
        "dataset": config["dataset"],
        "budget": budget,
        "params": sum(p.numel() for p in model.parameters()),
        "steps_per_epoch": steps_per_epoch,
        **figures,
        "memory_before_train_mb": before.peak_mb,
        "load_average": [load_start, load_end],  # 1-min load at the start / end of training
        "cpu_count": os.cpu_count(),
        "build_seconds": build_seconds,
        "epoch_stats": stats,
        "seed": config["seed"],
        "device": str(device),
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "recbole_version": recbole.__version__,
        "python_version": platform.python_version(),
        "trainer": f"{type(trainer).__module__}.{type(trainer).__name__}",
        "valid_metric": str(config["valid_metric"]).lower(),
        "config": {key: _jsonable(config[key]) for key in sorted(reported_keys) if key in config},
        "resumed_at_epoch": trainer.start_epoch if resume else None,
    }
    if validations:
        result["valid_seconds"] = sum(v["seconds"] for v in validations)
        result["valid_result"] = {k: float(v) for k, v in validations[-1]["result"].items()}
        result["valid_curve"] = [
            {"epoch": v["epoch"], "train_seconds": v["train_seconds"],
             "result": {k: float(x) for k, x in v["result"].items()}}
            for v in validations
        ]
    if on_trained is not None:
        on_trained(dict(result))

    eval_loader, eval_users = first_users_loader(test_data, spec.get("eval_max_users"))
    with PeakMemory(config["device"]) as eval_memory:
        begin = perf_counter()
        test_result = trainer.evaluate(
            eval_loader, load_best_model=False, show_progress=config["show_progress"]
        )
        eval_seconds = perf_counter() - begin
    result.update({
        "status": "ok",
        "eval_users": int(len(eval_users)),
        "eval_users_total": int(len(_user_order(test_data))),
        "eval_users_fingerprint": _users_fingerprint(test_data._dataset, eval_users),
        "eval_seconds": eval_seconds,
        "eval_seconds_per_user": eval_seconds / max(len(eval_users), 1),
        "eval_peak_memory_mb": eval_memory.peak_mb,
        "test_result": {k: float(v) for k, v in test_result.items()},
    })
    return result


def training_flops(model, batches):
    """FLOPs of one training step (loss forward + backward) of each batch, counted by
    :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls, attention, convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    counts = []
    model.train()
    for batch in batches:
        counter = FlopCounterMode(display=False)
        with counter:
            loss = model.calculate_loss(batch)
            loss = sum(loss) if isinstance(loss, tuple) else loss
            loss.backward()
        model.zero_grad(set_to_none=True)
        counts.append(counter.get_total_flops())
    return counts


def matmul_flops_per_second(device, size=2048, seconds=2.0):
    """The machine's own dense float32 matmul rate (``size`` x ``size`` products, the model's
    threads), the denominator of the utilisation column. On CPU it is per CPU second of this
    process (like the model's rate), so other processes holding the cores do not lower it."""
    device = torch.device(device)
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    cuda = device.type == "cuda"
    clock = perf_counter if cuda else process_time
    torch.mm(a, b)
    if cuda:
        torch.cuda.synchronize(device)
    runs, begin, wall = 0, clock(), perf_counter()
    while perf_counter() - wall < seconds:
        torch.mm(a, b)
        runs += 1
    if cuda:
        torch.cuda.synchronize(device)
    return 2 * size**3 * runs / (clock() - begin)


def utilisation(model, train_data, figures, device, n_batches=4):
    """How close training ran to the machine's limit: the model's FLOPs per training second
    (the mean FLOPs of ``n_batches`` training batches drawn from the loader, times the steps
    taken, over the training time: CPU seconds of this process on CPU, wall seconds on GPU),
    the dense matmul rate measured the same way now, and their ratio."""
    batches = []
    for batch in train_data:
        batches.append(batch.to(device))
        if len(batches) == n_batches:
            break
    per_step = float(np.mean(training_flops(model, batches)))
    seconds = figures["train_seconds" if torch.device(device).type == "cuda" else "train_cpu_seconds"]
    model_rate = per_step * figures["train_steps"] / seconds
    matmul_rate = matmul_flops_per_second(device)
    return {
        "flops_per_step": per_step,
        "model_gflops_per_second": model_rate / 1e9,
        "matmul_gflops_per_second": matmul_rate / 1e9,
        "utilisation": model_rate / matmul_rate,
    }


def _load_average():
    """The machine's 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def main(argv=None):
    """Subprocess entry: ``python -m recbole_semprune.benchmark.worker SPEC.json``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m recbole_semprune.benchmark.worker SPEC.json", file=sys.stderr)
        return 2
    # RecBole's pandas / torch.cuda.amp deprecation warnings say nothing about the benchmark
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")
    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    if spec.get("version") != SPEC_VERSION:
        print(f"spec version {spec.get('version')} != {SPEC_VERSION}", file=sys.stderr)
        return 2
    trained_path = os.path.join(os.path.dirname(spec["result_path"]), TRAINED_FILE)
    result = run_model(spec, on_trained=lambda partial: write_json(trained_path, partial))
    finish(spec, result)
    return 0


def finish(spec, result):
    """Writes the model's result, then removes its resume state (nothing left to resume)."""
    write_json(spec["result_path"], result)
    last_file = spec.get("last_checkpoint")
    if last_file and os.path.exists(last_file):
        os.remove(last_file)


def write_json(path, data):
    """Write ``data`` to ``path`` atomically (a reader never sees half a file)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
