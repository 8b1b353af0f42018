"""Next-item latency and state bytes per user against history length:
``python -m recbole_semprune.benchmark.latency``.

    python -m recbole_semprune.benchmark.latency --dataset=ml-100k --models=DecoderOnlySID,Rec2PM \
        --latency_lengths=50,200,500,1000,2000 [--KEY=VALUE ...] [--Model.KEY=VALUE ...]

For every model of ``--models`` and every history length ``n``: how long one request of one
user takes and how many bytes that user's serving state holds.

- a **stateful** model (``init_state`` / ``update`` / ``recommend``: Rec2PM) keeps its state
  between requests; a request is ``update(state, [new item])`` then ``recommend(state, k)``,
  timed for ``segment_len`` consecutive requests after ``n`` items (every length of the
  incomplete segment and one segment fold); the state is ``Rec2PMState.bytes_per_user``;
- a **full-history SID model** (``generation_state``) reads the whole history at every request
  (``full_sort_predict``: prefill of ``n x L`` tokens, then beam search); its state is the KV
  cache of the history, measured after the prefill;
- any other sequential model: ``full_sort_predict`` + top-k; state = ``2 x n_layers x n x
  hidden_size`` floats when it has those sizes, else the history's item ids.

Histories are synthetic; models are built from the same config as the benchmark's (dataset,
codes, overrides) with ``MAX_ITEM_LIST_LENGTH`` raised to the longest length, untrained, and
measured one after another in this process. Outputs in ``--output``: ``latency.csv``,
``latency.md``, ``latency.json``, ``latency.png`` (with matplotlib); the section is also
appended to a ``results.md`` already there (a training benchmark run with the same ``--output``).
"""

import argparse
import datetime
import gc
import json
import os
import shlex
import statistics
import sys
import warnings
from time import perf_counter

from recbole_semprune.benchmark import report
from recbole_semprune.benchmark.common import (
    BenchmarkError, add_model_arguments, cli_logging, logger, parse_models, parse_overrides,
    positive_int, preflight,
)

COLUMNS = ["model"] + report.columns("latency")


def _lengths(text):
    try:
        lengths = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--latency_lengths must be comma-separated integers, got {text!r}")
    if not lengths or lengths[0] < 1:
        raise argparse.ArgumentTypeError(f"--latency_lengths must be positive, got {text!r}")
    return lengths


def parse_args(argv):
    """``(namespace, global_overrides, {model: overrides})``; exits with status 2 on bad flags."""
    parser = argparse.ArgumentParser(prog="python -m recbole_semprune.benchmark.latency",
                                     description=__doc__.split("\n")[0], allow_abbrev=False)
    add_model_arguments(parser)
    parser.add_argument("--latency_lengths", type=_lengths, default=[50, 200, 500, 1000, 2000],
                        help="the history lengths (default 50,200,500,1000,2000)")
    parser.add_argument("--latency_repeats", type=positive_int, default=3,
                        help="timed requests per length of a full-history model (after one warm-up)")
    parser.add_argument("--latency_k", type=positive_int, default=10, help="items per recommendation")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="output folder (default: bench_out/<dataset>-latency-<timestamp>)")
    args, extra = parser.parse_known_args(argv)
    parse_models(parser, args)
    return (args, *parse_overrides(parser, extra, args.models))


# ---- measuring one model ---------------------------------------------------------------------
def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device, request):
    _sync(device)
    begin = perf_counter()
    request()
    _sync(device)
    return perf_counter() - begin


def tensor_bytes(value, keys=None):
    """Bytes of every tensor in a nest of dicts / lists (only dict entries named in ``keys``)."""
    import torch

    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(
            tensor_bytes(v, keys) for k, v in value.items() if keys is None or k in keys
        )
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v, keys) for v in value)
    return 0


KV_KEYS = ("self_k", "self_v", "shared_k", "shared_v", "cross_k", "cross_v")


def _synthetic_history(model, n, seed):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, model.n_items, (1, n), generator=generator)


def measure_stateful(model, n, k, device):
    """Rec2PM-like: ``segment_len`` requests (update one item + recommend) after ``n`` items."""
    cycle = int(getattr(model, "segment_len", 1))
    history = _synthetic_history(model, n + cycle + 1, seed=n).to(device)
    state = model.init_state(history[:, :n])
    state_bytes = state.bytes_per_user()
    model.recommend(model.update(state, history[:, n + cycle : n + cycle + 1]), k)  # warm-up
    times = []
    for i in range(cycle):
        new = history[:, n + i : n + i + 1]

        def request():
            nonlocal state
            state = model.update(state, new)
            model.recommend(state, k)

        times.append(_timed(device, request))
    c, d = model.mem_tokens, model.hidden_size
    tail = int(getattr(model, "tail_len", 0))
    kind = f"memory {c}x{d} + {f'{tail} tail + ' if tail else ''}pending ids (measured)"
    return times, state_bytes, kind


def measure_full_history(model, n, k, repeats, device):
    """A model that reads the whole history at every request (timed ``repeats`` times)."""
    import torch
    from recbole.data.interaction import Interaction

    history = _synthetic_history(model, n, seed=n).to(device)
    length = torch.tensor([n], device=device)
    interaction = Interaction({model.ITEM_SEQ: history, model.ITEM_SEQ_LEN: length}).to(device)

    def request():
        model.full_sort_predict(interaction).topk(k, dim=1)

    request()  # warm-up
    times = [_timed(device, request) for _ in range(repeats)]
    if hasattr(model, "generation_state"):
        state, step, _ = model.generation_state(history, length)
        prefixes = torch.zeros(1, 0, dtype=torch.long, device=device)
        _, after = step(state, prefixes, 0)  # the prefill: the cache now holds the history
        return times, tensor_bytes(after.get("cache"), KV_KEYS), "KV cache (measured)"
    n_layers, hidden = getattr(model, "n_layers", None), getattr(model, "hidden_size", None)
    if isinstance(n_layers, int) and isinstance(hidden, int):
        return times, 2 * n_layers * n * hidden * 4, "KV cache (computed from sizes)"
    return times, n * history.element_size(), "history item ids"


def measure_model(spec, options, threads=None):
    """Latency rows of one model (one per history length) from its benchmark ``spec``."""
    import torch

    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        with warnings.catch_warnings():
            # RecBole's pandas deprecation warnings say nothing about latency
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")
            return _measure_model(spec, options)
    finally:
        torch.set_num_threads(saved_threads)
        gc.collect()


def _measure_model(spec, options):
    import torch
    from recbole.utils import init_seed

    from recbole_semprune.benchmark.common import build_config
    from recbole_semprune.utils import create_dataset, get_model

    config = build_config(spec)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train = dataset.build()[0]
    longest = max(options["lengths"])
    # positions for the longest history (the dataset kept its own MAX_ITEM_LIST_LENGTH)
    config["MAX_ITEM_LIST_LENGTH"] = max(longest, config["MAX_ITEM_LIST_LENGTH"])
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train).to(config["device"]).eval()
    device = torch.device(config["device"])
    stateful = all(hasattr(model, m) for m in ("init_state", "update", "recommend"))
    rows = []
    with torch.no_grad():
        for n in options["lengths"]:
            if stateful:
                times, state_bytes, kind = measure_stateful(model, n, options["k"], device)
            else:
                times, state_bytes, kind = measure_full_history(
                    model, n, options["k"], options["repeats"], device
                )
            row = {
                "model": spec["model"],
                "history_length": n,
                "latency_ms": 1000 * statistics.mean(times),
                "latency_max_ms": 1000 * max(times),
                "requests": len(times),
                "state_bytes": int(state_bytes),
                "state_kind": kind,
            }
            logger.info(
                "latency %s n=%d: %.2f ms/request (%d requests), state %s bytes/user",
                spec["model"], n, row["latency_ms"], len(times), f"{row['state_bytes']:,}",
            )
            rows.append(row)
    return rows, {"device": str(device), "torch_threads": torch.get_num_threads()}


# ---- tables, plot and command --------------------------------------------------------------
def markdown(meta, rows):
    """The latency section: its command and settings, then one line per model and length."""
    return "\n".join([
        "## Latency and state per user", "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}; device: {meta['device']}; torch threads: {meta['threads']}",
        f"- history lengths: {', '.join(map(str, meta['lengths']))} (synthetic histories, one "
        f"user per request, top-{meta['k']}); baseline of the ratios: {meta['baseline']}",
        "- stateful models (Rec2PM): mean over `segment_len` consecutive requests, each "
        "`update(state, [new item])` + `recommend(state, k)` after `n` items (one segment fold "
        "among them; `latency_max_ms` is the slowest); full-history models: mean of "
        f"{meta['repeats']} `full_sort_predict` calls over the whole `n`-item history (after one "
        "warm-up)",
        "- state: Rec2PM's state as stored (memory + tail and pending item ids + counters); a "
        "full-history SID model's KV cache of the history (all layers, keys and values)", "",
        report.markdown_table(COLUMNS, rows)]) + "\n"


def write_plot(path, rows, title=None):
    """Latency and state bytes against history length, one line per model (log-log).
    Returns True when written, False (with a log line) without matplotlib."""
    if not rows or (plt := report.pyplot(path)) is None:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, ax, label in (("latency_ms", axes[0], "next-item latency per user (ms)"),
                           ("state_bytes", axes[1], "state per user (bytes)")):
        for model in dict.fromkeys(r["model"] for r in rows):
            mine = [r for r in rows if r["model"] == model]
            ax.plot([r["history_length"] for r in mine], [r[key] for r in mine], marker="o", label=model)
        ax.set(xscale="log", yscale="log", xlabel="history length (items)", title=label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    report.save_figure(plt, fig, path, title)
    return True


def run_latency(argv):
    """Measure the models of ``argv``; returns ``(output_dir, rows)``. Raises
    :class:`BenchmarkError` or ``SystemExit(2)`` on a bad setup, before anything runs."""
    import torch

    args, global_overrides, model_overrides = parse_args(argv)
    now = datetime.datetime.now()
    output = args.output or os.path.join("bench_out", f"{args.dataset}-latency-{now:%Y%m%d-%H%M%S}")
    shared = {**global_overrides, **({"data_path": args.data_path} if args.data_path else {})}
    specs = [{"model": m, "model_class": args.model_classes[m], "dataset": args.dataset,
              "config_files": [os.path.abspath(f) for f in args.config_files],
              "config_dict": {**shared, **model_overrides[m]}} for m in args.models]
    preflight(args, specs)
    options = {"lengths": args.latency_lengths, "repeats": args.latency_repeats, "k": args.latency_k}
    os.makedirs(output, exist_ok=True)
    rows, info = [], {}
    for index, spec in enumerate(specs, 1):
        logger.info("latency [%d/%d] %s", index, len(specs), spec["model"])
        model_rows, info = measure_model(spec, options, args.threads)
        rows += model_rows
    report.add_ratios(rows, lambda row: row["model"] == args.baseline, key=lambda row: row["history_length"])
    meta = {"command": shlex.join(["python", "-m", "recbole_semprune.benchmark.latency", *argv]),
            "date": now.isoformat(timespec="seconds"), "dataset": args.dataset,
            "models": args.models, "baseline": args.baseline, **options,
            "device": info.get("device"), "threads": info.get("torch_threads"),
            "torch_version": torch.__version__}
    with open(os.path.join(output, "latency.json"), "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    report.write_csv(os.path.join(output, "latency.csv"), COLUMNS, rows)
    section = markdown(meta, rows)
    with open(os.path.join(output, "latency.md"), "w", encoding="utf-8") as f:
        f.write(section)
    if os.path.exists(os.path.join(output, "results.md")):  # a benchmark's folder: one report
        with open(os.path.join(output, "results.md"), "a", encoding="utf-8") as f:
            f.write("\n" + section)
    title = f"{args.dataset}: latency and state vs history length"
    if write_plot(os.path.join(output, "latency.png"), rows, title=title):
        logger.info("plot: %s", os.path.join(output, "latency.png"))
    logger.info("latency: %s", os.path.abspath(output))
    return output, rows


def main(argv=None):
    """``python -m recbole_semprune.benchmark.latency``; returns the exit status (2: usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with cli_logging():
            output, _ = run_latency(argv)
    except BenchmarkError as error:
        print(f"python -m recbole_semprune.benchmark.latency: error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # argparse's usage error
        return exit_.code
    with open(os.path.join(output, "latency.md"), encoding="utf-8") as f:
        sys.stdout.write(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
