"""Latency mode of the benchmark: next-item latency and state bytes per user vs history length.

``python -m recbole_semprune.benchmark --latency ...`` (or ``--latency_lengths=50,200,...``)
measures, for every model of ``--models`` and every history length ``n``, how long one request
of one user takes and how many bytes that user's serving state holds:

- a **stateful** model (one with ``init_state`` / ``update`` / ``recommend``: Rec2PM) keeps its
  state between requests; a request is ``update(state, [new item])`` then
  ``recommend(state, k)``, timed for ``segment_len`` consecutive requests after a history of
  ``n`` items (so every length of the incomplete segment and one segment fold are counted
  once); the state is :meth:`~recbole_semprune.model.rec2pm.Rec2PMState.bytes_per_user` at
  ``n`` items;
- a **full-history SID model** (``generation_state``: DecoderOnlySID, TIGER ...) reads the
  whole history at every request: ``full_sort_predict`` (prefill of ``n x L`` tokens, then
  beam search); its state is the KV cache of the history (measured: the keys and values of
  every layer after the prefill), what it would have to keep per user to skip the prefill;
- any other RecBole sequential model: ``full_sort_predict`` + top-k; state = its keys and
  values computed from its sizes (``2 x n_layers x n x hidden_size`` floats) when it has
  ``n_layers`` and ``hidden_size``, else the history's item ids.

Histories are synthetic (uniform random item ids): cost does not depend on which items they
are. Models are built from their benchmark config (same dataset, codes and overrides as the
accuracy run) with ``MAX_ITEM_LIST_LENGTH`` raised to the longest length, untrained (cost does
not depend on the weights), and measured one after another in this process, one user per
request. With a training budget (``--epochs`` / ``--max_steps``) on the same command line, the
usual benchmark runs first and the latency tables go to the same folder, appended to
``results.md``: accuracy, training cost and latency of one invocation.

Outputs: ``latency.csv``, ``latency.md``, ``latency.json`` and ``latency.png`` (with
matplotlib) in the output folder.
"""

import csv
import datetime
import gc
import json
import logging
import os
import statistics
import sys
import warnings
from time import perf_counter

from recbole_semprune.benchmark import report

logger = logging.getLogger("recbole_semprune.benchmark")

DEFAULT_LENGTHS = (50, 200, 500, 1000, 2000)
FLAGS = ("--latency", "--latency_lengths", "--latency_repeats", "--latency_k")
COLUMNS = [
    "model",
    "history_length",
    "latency_ms",
    "latency_ratio",
    "latency_max_ms",
    "requests",
    "state_bytes",
    "state_ratio",
    "state_kind",
]


class LatencyArgumentError(ValueError):
    """A bad latency flag."""


def requested(argv):
    """Whether the command line asks for the latency mode."""
    return any(arg.split("=", 1)[0] in FLAGS for arg in argv)


def _positive_int(flag, text):
    try:
        value = int(text)
    except ValueError:
        raise LatencyArgumentError(f"{flag}: invalid int value {text!r}") from None
    if value < 1:
        raise LatencyArgumentError(f"{flag} must be >= 1, got {value}")
    return value


def split_argv(argv):
    """``(options, rest)``: the latency flags parsed, and the benchmark's own arguments."""
    options = {"lengths": list(DEFAULT_LENGTHS), "repeats": 3, "k": 10}
    rest = []
    for arg in argv:
        flag, has_value, value = arg.partition("=")
        if flag == "--latency":
            if has_value:
                raise LatencyArgumentError("--latency takes no value (use --latency_lengths=...)")
        elif flag == "--latency_lengths":
            try:
                lengths = [int(v) for v in value.split(",") if v.strip()]
            except ValueError:
                raise LatencyArgumentError(
                    f"--latency_lengths must be comma-separated integers, got {value!r}"
                ) from None
            if not lengths or min(lengths) < 1:
                raise LatencyArgumentError(f"--latency_lengths must be positive, got {value!r}")
            options["lengths"] = sorted(set(lengths))
        elif flag == "--latency_repeats":
            options["repeats"] = _positive_int(flag, value)
        elif flag == "--latency_k":
            options["k"] = _positive_int(flag, value)
        else:
            rest.append(arg)
    return options, rest


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

    from recbole_semprune.benchmark.worker import build_config
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


# ---- tables and plot ---------------------------------------------------------------------------
def add_ratios(rows, baseline):
    """``latency_ratio`` / ``state_ratio``: each row over the baseline model's at that length."""
    base = {r["history_length"]: r for r in rows if r["model"] == baseline}
    for row in rows:
        ref = base.get(row["history_length"])
        row["latency_ratio"] = row["latency_ms"] / ref["latency_ms"] if ref else None
        row["state_ratio"] = row["state_bytes"] / ref["state_bytes"] if ref else None
    return rows


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})


def _cell(column, value):
    if value is None:
        return "—"
    if column.endswith("_ratio"):
        return f"{value:.2g}x" if value < 0.1 else f"{value:.2f}x"
    if column.endswith("_ms"):
        return f"{value:,.1f}" if value >= 100 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(meta, rows):
    """The latency section: its command and settings, then one line per model and length."""
    lines = [
        "## Latency and state per user",
        "",
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
        "full-history SID model's KV cache of the history (all layers, keys and values)",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "| "
        + " | ".join("---" if c in ("model", "state_kind") else "---:" for c in COLUMNS)
        + " |",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(c, row.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_plot(path, rows, title=None):
    """Latency and state bytes against history length, one line per model (log-log).

    Returns True when written, False (with a log line) without matplotlib.
    """
    if not rows or (plt := report.pyplot(path)) is None:
        return False
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, ax, label in (
        ("latency_ms", axes[0], "next-item latency per user (ms)"),
        ("state_bytes", axes[1], "state per user (bytes)"),
    ):
        for model in models:
            mine = [r for r in rows if r["model"] == model]
            ax.plot([r["history_length"] for r in mine], [r[key] for r in mine], marker="o",
                    label=model)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("history length (items)")
        ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    if title:
        fig.suptitle(title)
    report.save_figure(plt, fig, path)
    return True


# ---- command -----------------------------------------------------------------------------------
def run_latency(argv):
    """Run the latency mode described by ``argv``; returns ``(status, output_dir, rows)``.

    With ``--epochs`` / ``--max_steps`` the accuracy benchmark runs first (same output folder).
    Raises :class:`~recbole_semprune.benchmark.cli.BenchmarkError` or ``SystemExit(2)`` on a
    bad setup, before anything runs.
    """
    import shlex

    import torch

    from recbole_semprune.benchmark import cli

    options, rest = split_argv(argv)
    trains = any(arg.split("=", 1)[0] in ("--epochs", "--max_steps") for arg in rest)
    if trains:
        status, output, _ = cli.run_benchmark(rest)
        args, global_overrides, model_overrides = cli.parse_args(rest)
    else:
        # the benchmark's own parser checks every flag; the budget it asks for is not used
        args, global_overrides, model_overrides = cli.parse_args(rest + ["--max_steps=1"])
        status = 0
        now = datetime.datetime.now()
        output = args.output or os.path.join(
            "bench_out", f"{args.dataset}-latency-{now:%Y%m%d-%H%M%S}"
        )
    specs = [
        cli.model_spec(args, m, global_overrides, model_overrides, os.path.join(output, m))
        for m in args.models
    ]
    if not trains:
        cli.preflight(args, specs)
    os.makedirs(output, exist_ok=True)
    rows, device, threads = [], None, None
    for index, spec in enumerate(specs, 1):
        logger.info("latency [%d/%d] %s", index, len(specs), spec["model"])
        model_rows, info = measure_model(spec, options, args.threads)
        rows += model_rows
        device, threads = info["device"], info["torch_threads"]
    add_ratios(rows, args.baseline)
    meta = {
        "command": shlex.join(["python", "-m", "recbole_semprune.benchmark", *argv]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "dataset": args.dataset,
        "models": args.models,
        "baseline": args.baseline,
        "lengths": options["lengths"],
        "repeats": options["repeats"],
        "k": options["k"],
        "device": device,
        "threads": threads,
        "torch_version": torch.__version__,
    }
    with open(os.path.join(output, "latency.json"), "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    write_csv(os.path.join(output, "latency.csv"), rows)
    section = markdown(meta, rows)
    with open(os.path.join(output, "latency.md"), "w", encoding="utf-8") as f:
        f.write(section)
    if trains:
        with open(os.path.join(output, "results.md"), "a", encoding="utf-8") as f:
            f.write("\n" + section)
    title = f"{args.dataset}: latency and state vs history length"
    if write_plot(os.path.join(output, "latency.png"), rows, title=title):
        logger.info("plot: %s", os.path.join(output, "latency.png"))
    logger.info("latency: %s", os.path.abspath(output))
    return status, output, rows


def main(argv):
    """Entry point of the latency mode (from :func:`recbole_semprune.benchmark.main`)."""
    from recbole_semprune.benchmark import cli

    try:
        with cli._cli_logging():
            status, output, _ = run_latency(argv)
    except (cli.BenchmarkError, LatencyArgumentError) as error:
        print(f"{cli.build_parser().prog}: error: {error}", file=sys.stderr)
        return 2
    trains = any(arg.split("=", 1)[0] in ("--epochs", "--max_steps") for arg in argv)
    name = "results.md" if trains else "latency.md"
    with open(os.path.join(output, name), encoding="utf-8") as f:
        sys.stdout.write(f.read())
    sys.stdout.flush()
    return status
