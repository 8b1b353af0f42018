"""Next-item latency and state bytes per user against history length, of untrained models on
synthetic histories (docs/rec2pm.md): ``python -m recbole_semprune.benchmark.latency``."""

import argparse
import gc
import os
import statistics
import sys
import warnings
from time import perf_counter

from recbole_semprune.benchmark import report
from recbole_semprune.benchmark.common import (
    build_config, logger, model_parser, model_specs, parse_models, positive_int, preflight,
    run_command, start, torch_threads, write_json, write_text,
)

COLUMNS = ["model"] + report.columns("latency")
PROG = "python -m recbole_semprune.benchmark.latency"
KV_KEYS = ("self_k", "self_v", "shared_k", "shared_v", "cross_k", "cross_v")


def _lengths(text):
    try:
        lengths = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--latency_lengths must be comma-separated integers, got {text!r}")
    if not lengths or lengths[0] < 1:
        raise argparse.ArgumentTypeError(f"--latency_lengths must be positive, got {text!r}")
    return lengths


def parse_args(argv):
    """``(namespace, global_overrides, {model: overrides})``; exits with status 2 on bad flags."""
    parser = model_parser(PROG, "Next-item latency and state bytes per user against "
                          "history length (docs/rec2pm.md).")
    parser.add_argument("--latency_lengths", type=_lengths, default=[50, 200, 500, 1000, 2000],
                        help="the history lengths (default 50,200,500,1000,2000)")
    parser.add_argument("--latency_repeats", type=positive_int, default=3, help="timed requests "
                        "per length of a full-history model (after one warm-up)")
    parser.add_argument("--latency_k", type=positive_int, default=10,
                        help="items per recommendation")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="output folder (default: bench_out/<dataset>-latency-<timestamp>)")
    args, extra = parser.parse_known_args(argv)
    return (args, *parse_models(parser, args, extra))


def _timed(device, request):
    """Wall seconds of ``request()`` (the GPU synchronised before and after)."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda device: None)
    sync(device)
    begin = perf_counter()
    request()
    sync(device)
    return perf_counter() - begin


def tensor_bytes(value, keys=None):
    """Bytes of every tensor in a nest of dicts / lists (only dict entries named in ``keys``)."""
    if hasattr(value, "element_size"):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v, keys) for k, v in value.items() if keys is None or k in keys)
    return sum(tensor_bytes(v, keys) for v in value) if isinstance(value, (list, tuple)) else 0


def measure_stateful(model, n, k, repeats, device, history):
    """Rec2PM-like: ``segment_len`` requests (update one item + recommend) after ``n`` items."""
    cycle = int(getattr(model, "segment_len", 1))
    state = model.init_state(history[:, :n])
    state_bytes = state.bytes_per_user()
    model.recommend(model.update(state, history[:, n + cycle : n + cycle + 1]), k)  # warm-up
    times = []
    for i in range(cycle):
        def request(new=history[:, n + i : n + i + 1]):
            nonlocal state
            state = model.update(state, new)
            model.recommend(state, k)

        times.append(_timed(device, request))
    tail = int(getattr(model, "tail_len", 0))
    return times, state_bytes, (f"memory {model.mem_tokens}x{model.hidden_size} + "
                                f"{f'{tail} tail + ' if tail else ''}pending ids (measured)")


def measure_full_history(model, n, k, repeats, device, history):
    """A model that reads the whole history at every request (timed ``repeats`` times)."""
    import torch
    from recbole.data.interaction import Interaction

    history, length = history[:, :n], torch.tensor([n], device=device)
    interaction = Interaction({model.ITEM_SEQ: history, model.ITEM_SEQ_LEN: length}).to(device)

    def request():
        model.full_sort_predict(interaction).topk(k, dim=1)

    request()  # warm-up
    times = [_timed(device, request) for _ in range(repeats)]
    if hasattr(model, "generation_state"):
        state, step, _ = model.generation_state(history, length)
        # the prefill: the cache now holds the history
        _, after = step(state, torch.zeros(1, 0, dtype=torch.long, device=device), 0)
        return times, tensor_bytes(after.get("cache"), KV_KEYS), "KV cache (measured)"
    n_layers, hidden = getattr(model, "n_layers", None), getattr(model, "hidden_size", None)
    if isinstance(n_layers, int) and isinstance(hidden, int):
        return times, 2 * n_layers * n * hidden * 4, "KV cache (computed from sizes)"
    return times, n * history.element_size(), "history item ids"


def measure_model(spec, options, threads=None):
    """``(a row per history length, {"device", "threads"})`` of one model's ``spec``."""
    import torch
    from recbole.utils import init_seed

    from recbole_semprune.utils import create_dataset, get_model

    with torch_threads(threads), warnings.catch_warnings():
        # RecBole's pandas deprecation warnings say nothing about latency
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")
        config = build_config(spec)
        init_seed(config["seed"], config["reproducibility"])
        train = create_dataset(config).build()[0]
        # positions for the longest history (the dataset kept its own MAX_ITEM_LIST_LENGTH)
        config["MAX_ITEM_LIST_LENGTH"] = max(*options["lengths"], config["MAX_ITEM_LIST_LENGTH"])
        init_seed(config["seed"], config["reproducibility"])
        model = get_model(config["model"])(config, train).to(config["device"]).eval()
        device, rows = torch.device(config["device"]), []
        stateful = all(hasattr(model, m) for m in ("init_state", "update", "recommend"))
        measure = measure_stateful if stateful else measure_full_history
        for n in options["lengths"]:
            cycle = int(getattr(model, "segment_len", 1)) + 1 if stateful else 0
            history = torch.randint(1, model.n_items, (1, n + cycle),
                                    generator=torch.Generator().manual_seed(n)).to(device)
            with torch.no_grad():
                times, state_bytes, kind = measure(model, n, options["k"], options["repeats"],
                                                   device, history)
            rows.append({"model": spec["model"], "history_length": n,
                         "latency_ms": 1000 * statistics.mean(times),
                         "latency_max_ms": 1000 * max(times), "requests": len(times),
                         "state_bytes": int(state_bytes), "state_kind": kind})
            logger.info("latency %s n=%d: %.2f ms/request (%d requests), state %s bytes/user",
                        spec["model"], n, rows[-1]["latency_ms"], len(times),
                        f"{int(state_bytes):,}")
        info = {"device": str(device), "threads": torch.get_num_threads()}
    gc.collect()
    return rows, info


def markdown(meta, rows):
    """The latency section: its command and settings, then one line per model and length."""
    return "\n".join([
        "## Latency and state per user", "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}; device: {meta['device']}; torch threads: {meta['threads']}",
        f"- history lengths: {', '.join(map(str, meta['lengths']))} (synthetic histories, one "
        f"user per request, top-{meta['k']}); baseline of the ratios: {meta['baseline']}",
        "- stateful models (Rec2PM): mean over `segment_len` consecutive requests, each "
        "`update(state, [new item])` + `recommend(state, k)` after `n` items; full-history "
        f"models: mean of {meta['repeats']} `full_sort_predict` calls after one warm-up",
        "- state: Rec2PM's state as stored; a full-history SID model's KV cache of the history", "",
        report.markdown_table(COLUMNS, rows)]) + "\n"


def run_latency(argv):
    """Measure the models of ``argv``; returns ``(output_dir, rows)``."""
    import torch

    args, global_overrides, model_overrides = parse_args(argv)
    output, meta = start(PROG, argv, args.output, f"{args.dataset}-latency")
    specs = model_specs(args, global_overrides, model_overrides)
    preflight(args, specs)
    options = {"lengths": args.latency_lengths, "repeats": args.latency_repeats,
               "k": args.latency_k}
    os.makedirs(output, exist_ok=True)
    rows = []
    for index, spec in enumerate(specs, 1):
        logger.info("latency [%d/%d] %s", index, len(specs), spec["model"])
        model_rows, info = measure_model(spec, options, args.threads)
        rows += model_rows
    report.add_ratios(rows, lambda row: row["model"] == args.baseline,
                      key=lambda row: row["history_length"])
    meta.update(dataset=args.dataset, models=args.models, baseline=args.baseline, **options,
                **info, torch_version=torch.__version__)
    write_json(os.path.join(output, "latency.json"), {"meta": meta, "rows": rows})
    report.write_csv(os.path.join(output, "latency.csv"), COLUMNS, rows)
    section = markdown(meta, rows)
    write_text(os.path.join(output, "latency.md"), section)
    if os.path.exists(os.path.join(output, "results.md")):  # a benchmark's folder: one report
        with open(os.path.join(output, "results.md"), "a", encoding="utf-8") as f:
            f.write("\n" + section)

    def draw(axes):  # log-log, one line per model
        for ax, (key, label) in zip(axes, (("latency_ms", "next-item latency per user (ms)"),
                                           ("state_bytes", "state per user (bytes)"))):
            report.lines(ax, rows, "history_length", key)
            ax.set(xscale="log", yscale="log", xlabel="history length (items)", title=label)

    if rows:
        report.plot(os.path.join(output, "latency.png"), draw, f"{args.dataset}: latency and "
                    "state vs history length", ncols=2, figsize=(10, 3.8))
    logger.info("latency: %s", os.path.abspath(output))
    return output, rows


def main(argv=None):
    """``python -m recbole_semprune.benchmark.latency``; returns the exit status (2: usage)."""
    return run_command(PROG, lambda argv: (0, run_latency(argv)[0]), argv, "latency.md")


if __name__ == "__main__":
    sys.exit(main())
