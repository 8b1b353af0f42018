"""The benchmark's tables and plots. Every column is declared once, in :data:`COLUMNS`."""

import csv
import math
import os
from collections import namedtuple

from recbole_semprune.benchmark.common import logger, write_json, write_text

# kind: "cost" (results.md and the head of results.csv), "md" (results.md, tail of results.csv),
# "extra" (tail of results.csv), "ratio" (results.md and .csv), "latency" (latency.csv/.md),
# "results" (results mode); fmt: how a markdown table writes a value; of: a ratio's figure
# (this row's / the baseline's); head: a table's header (default: the name).
Column = namedtuple("Column", "kind fmt text of head", defaults=(None, None))
COLUMNS = {
    "model": Column("cost", "text", "the model's name, or its LABEL of --models=LABEL=MODEL"),
    "train_steps": Column("cost", "int", "optimisation steps taken"),
    "train_seconds_per_step": Column("cost", "num", "training seconds / steps (data loading, "
                                     "forward, backward, optimiser step; validation excluded)"),
    "train_seconds_per_step_ratio": Column("ratio", "ratio", "", "train_seconds_per_step"),
    "train_cpu_seconds_per_step": Column("md", "num", "the same steps in CPU seconds of the "
                                         "model's process (all its threads): not inflated by "
                                         "other processes; compare it at the same --threads"),
    "train_cpu_seconds_per_step_ratio": Column("ratio", "ratio", "", "train_cpu_seconds_per_step"),
    "train_seconds_per_epoch": Column("cost", "num", "--epochs: measured; --max_steps: "
                                      "train_seconds_per_step x steps_per_epoch"),
    "epoch_time_source": Column("cost", "text", "measured or extrapolated"),
    "tokens_per_second": Column("cost", "0f", "input tokens per training second (items of the "
                                "input sequences; SID models: items x code levels)"),
    "tokens_per_second_ratio": Column("ratio", "ratio", "", "tokens_per_second"),
    "padding_share": Column("cost", "pct", "share of the token slots computed that were padding"),
    "model_gflops_per_second": Column("cost", "num", "the model's training FLOPs per training "
                                      "second (CPU seconds on CPU, wall seconds on GPU)"),
    "matmul_gflops_per_second": Column("cost", "num", "the machine's dense float32 matmul rate, "
                                       "timed the same way"),
    "utilisation": Column("cost", "pct", "model_gflops_per_second / matmul_gflops_per_second"),
    "kept_fraction": Column("cost", "pct", "pruning models: share of the history tokens kept"),
    "peak_memory_mb": Column("cost", "0f", "peak memory while training: CPU the process's RSS "
                             "(dataset and interpreter included), GPU max allocated",
                             head="peak MB"),
    "peak_memory_ratio": Column("ratio", "ratio", "", "peak_memory_mb"),
    "eval_seconds": Column("cost", "num", "wall seconds of the test evaluation"),
    "eval_seconds_per_user": Column("cost", "num", "eval_seconds / eval_users"),
    "eval_seconds_ratio": Column("ratio", "ratio", "", "eval_seconds"),
    "params": Column("cost", "int", "model parameters"),
    "tokens_per_history": Column("extra", "num", "pruning models: tokens per history"),
    "kept_tokens_per_history": Column("extra", "num", "pruning models: kept tokens per history"),
    "steps_per_epoch": Column("extra", "int", "length of the full train loader"),
    "train_seconds": Column("extra", "num", "training seconds in all"),
    "train_cpu_seconds": Column("extra", "num", "training CPU seconds in all"),
    "memory_before_train_mb": Column("extra", "0f", "memory held when training starts"),
    "eval_users": Column("extra", "int", "users evaluated"),
    "eval_peak_memory_mb": Column("extra", "0f", "peak memory during evaluation"),
    "build_seconds": Column("extra", "num", "dataset, split, model and trainer construction"),
    "padded_length": Column("extra", "num", "pruning models: history tokens per row before "
                            "pruning, padding included"),
    "pruned_length": Column("extra", "num", "pruning models: the same after pruning"),
    "status": Column("extra", "text", "ok or failed"),
    "error": Column("extra", "text", "why it failed"),
    "history_length": Column("latency", "int", "items in the history"),
    "latency_ms": Column("latency", "ms", "mean milliseconds per request"),
    "latency_ratio": Column("latency", "ratio", "over the baseline's", "latency_ms"),
    "latency_max_ms": Column("latency", "ms", "slowest request"),
    "requests": Column("latency", "int", "timed requests"),
    "state_bytes": Column("latency", "int", "bytes of the user's serving state"),
    "state_ratio": Column("latency", "ratio", "over the baseline's", "state_bytes"),
    "state_kind": Column("latency", "text", "what the state is"),
    "best_epoch": Column("results", "1f", "the best validation epoch", head="best epoch"),
    "seconds_to_best": Column("results", "0f", "training seconds to it", head="s to best"),
    "cpu_seconds_to_best": Column("results", "0f", "training CPU seconds to it (all the run's "
                                  "threads; not inflated by other processes)",
                                  head="CPU s to best"),
    "seconds_per_epoch": Column("results", "0f", "training seconds per epoch", head="s/epoch"),
    "cpu_seconds_per_epoch": Column("results", "0f", "training CPU seconds per epoch (all the "
                                    "run's threads; not inflated by other processes)",
                                    head="CPU s/epoch"),
}
TEXT_COLUMNS = {name for name, column in COLUMNS.items() if column.fmt == "text"}


def columns(*kinds):
    return [name for name, column in COLUMNS.items() if column.kind in kinds]


def finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def cell(name, value):
    """``value`` of column ``name`` as results.md (and latency.md) write it."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str) or not finite(value):
        return str(value)
    fmt = COLUMNS[name].fmt if name in COLUMNS else ("4f" if "@" in name else "num")
    if fmt == "ratio":
        return f"{value:.2g}x" if value < 0.1 else f"{value:.2f}x"
    if fmt == "pct":
        return f"{100 * value:.1f}%"
    if fmt == "int":
        return f"{int(value):,}"
    if fmt == "0f" or (fmt in ("num", "ms") and value >= 100):
        return f"{value:,.0f}" if fmt != "ms" else f"{value:,.1f}"
    if fmt in ("4f", "1f"):
        return f"{value:.{fmt[0]}f}"
    return f"{value:.2f}" if value >= 1 or fmt == "ms" else f"{value:.4f}"


def add_ratios(rows, is_baseline, key=lambda row: None):
    """Each ``*_ratio`` column of the rows' kinds: the row's figure / the baseline row's (the
    one ``is_baseline`` and with the same ``key``); None where either is missing."""
    bases = {key(row): row for row in rows if is_baseline(row)}
    for row in rows:
        base = bases.get(key(row), {})
        for name in [n for n, c in COLUMNS.items() if c.of in row]:
            value, ref = row.get(COLUMNS[name].of), base.get(COLUMNS[name].of)
            row[name] = value / ref if finite(value) and finite(ref) and ref != 0 else None
    return rows


def markdown_table(names, rows, cells=None, heads=None, text=()):
    """A GitHub markdown table of ``rows`` (dicts) over the columns ``names`` (headed ``heads``;
    ``text``: left-aligned besides the text columns; ``cells(row)``: a row's cells)."""
    aligns = ["---" if n in TEXT_COLUMNS or n in text else "---:" for n in names]
    lines = [heads or names, aligns] + [
        cells(row) if cells else [cell(n, row.get(n)) for n in names] for row in rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def write_csv(path, names, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: "" if row.get(k) is None else row[k] for k in names} for row in rows)


def metric_columns(rows):
    """RecBole's test metric keys (``recall@5``, ...) in the order it reports them, then the
    validation ones (``valid_recall@5``, ...)."""
    return list(dict.fromkeys([k for row in rows for k in row.get("test_result") or {}] + [
        f"valid_{k}" for row in rows for k in row.get("valid_result") or {}]))


def flat_rows(rows, baseline):
    """One flat dict per model: its figures, ratios to ``baseline``, test and valid metrics.
    A model that failed after training keeps its training figures (and their ratios)."""
    flat = [{**{k: v for k, v in row.items() if not isinstance(v, (dict, list))},
             **(row.get("test_result") or {}),
             **{f"valid_{k}": v for k, v in (row.get("valid_result") or {}).items()}}
            for row in rows]
    return add_ratios(flat, lambda row: row["model"] == baseline)


def results_table(rows, baseline):
    """The results table (one line per model; a failed one marked, with its training figures
    if it trained)."""
    names = columns("cost", "md", "ratio") + metric_columns(rows)

    def cells(flat):
        values = [cell(n, flat.get(n)) for n in names]
        if flat.get("status") == "ok":
            return values
        if flat.get("train_steps"):
            return [f"{flat['model']} (**failed**)"] + values[1:]
        return [flat["model"], "**failed**"] + ["—"] * (len(names) - 2)

    return markdown_table(names, flat_rows(rows, baseline), cells)


def markdown_report(meta, rows):
    """results.md: header (protocol, machine, command), the table, column notes and failures."""
    ok = [r for r in rows if r.get("status") == "ok"]
    ran = [r for r in rows if r.get("train_steps")]  # ok, or failed after training
    first, n = (ran or [{}])[0], meta["budget"]["value"]
    budget = (f"{n} full epoch(s) per model, no early stopping, no checkpoint; "
              "`train_seconds_per_epoch` measured" if meta["budget"]["mode"] == "epochs" else
              f"max_steps={n}: exactly {n} optimisation steps per model (the trainer's "
              "`max_steps`: epochs go on until then, the last one cut short); "
              "`train_seconds_per_epoch` extrapolated as seconds/step x steps per epoch")
    total = ok[0]["eval_users_total"] if ok else None
    of_total = f" of {total:,}" if total else ""
    evaluation = (f"the first {ok[0]['eval_users'] if ok else meta['eval_max_users']:,}{of_total}"
                  f" users of the test loader (`--eval_max_users={meta['eval_max_users']}`; the "
                  "same users for every model)" if meta.get("eval_max_users") else
                  "all " + (f"{total:,} " if total else "") + "test users")
    if meta.get("exclude_seen") is not None:
        evaluation += f"; history mask `exclude_seen: {meta['exclude_seen']}` (every model)"
    devices = sorted({f"{r['device']} ({r['device_name']})" for r in ran}) or [
        meta.get("device", "?")]
    threads = ", ".join(map(str, sorted({r["torch_threads"] for r in ran})))
    process = ("this process (`--in_process`: peak memory not isolated)" if meta.get("in_process")
               else "its own fresh process")
    lines = [
        f"# Benchmark: {meta['dataset']}", "", f"- command: `{meta['command']}`",
        f"- date: {meta['date']}",
        f"- dataset: `{meta['dataset']}` (data_path `{meta['data_path']}`)",
        f"- budget: {budget}", f"- evaluation: test split, full ranking, {evaluation}",
        f"- seed: {meta['seed']} (every model)",
        f"- device: {', '.join(devices)}" + (f"; torch threads: {threads}" if threads else ""),
        f"- versions: torch {first.get('torch_version', meta.get('torch_version'))}, recbole "
        f"{meta.get('recbole_version')}, recbole_semprune {meta['recbole_semprune_version']}, "
        f"python {meta.get('python_version')}",
        f"- baseline of the `*_ratio` columns: {meta['baseline']}",
        f"- models run one after another, each in {process}"]
    loads = [f"{r['model']} {r['load_average'][0]} -> {r['load_average'][1]}"
             for r in ran if None not in (r.get("load_average") or [None])]
    if loads:
        lines.append("- machine load (1-min load average at the start -> end of each model's "
                     f"training, {first.get('cpu_count')} CPUs; above the CPU count wall times "
                     "are inflated): " + ", ".join(loads))
    if meta.get("config_files"):
        lines.append(f"- config files: {', '.join(f'`{f}`' for f in meta['config_files'])}")
    lines += [f"- overrides for {who}: " + ", ".join(f"`{k}={v}`" for k, v in overrides.items())
              for who, overrides in [("every model", meta.get("global_overrides"))] + [
                  (f"{m} only", o) for m, o in (meta.get("model_overrides") or {}).items()]
              if overrides]
    lines += ["", results_table(rows, meta["baseline"]), "", "Columns:", ""]
    lines += [f"- `{n}`: {COLUMNS[n].text}" for n in columns("cost", "md", "ratio")
              if COLUMNS[n].text]
    lines.append("- `*_ratio`: this model's figure / the baseline's, from the same invocation; on "
                 "a shared CPU read ratios, not absolute times.")
    if len({r["eval_users_fingerprint"] for r in ok}) > 1:
        lines.append("- **warning**: the models were not evaluated on the same users "
                     "(their datasets order the test users differently).")
    failed = [f"- {r['model']}: {r.get('error') or 'failed'}" for r in rows
              if r.get("status") != "ok"]
    return "\n".join(lines + (["", "Failures:", ""] + failed if failed else [])) + "\n"


def csv_columns(rows):
    """results.csv's columns: the cost columns, the metrics, the ratios, then the others."""
    return columns("cost") + metric_columns(rows) + columns("ratio") + columns("md", "extra")


def write_tables(output, meta, rows):
    """results.json, results.csv and results.md of the models run so far."""
    write_json(os.path.join(output, "results.json"), {"meta": meta, "rows": rows})
    write_csv(os.path.join(output, "results.csv"), csv_columns(rows),
              flat_rows(rows, meta["baseline"]))
    write_text(os.path.join(output, "results.md"), markdown_report(meta, rows))


def plot(path, draw, title=None, **figure):
    """``draw(ax or axes)`` on a new matplotlib figure (Agg), titled and written to ``path``
    (PNG). False, with a log line, without matplotlib (the plot skipped)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: skipping %s (pip install "
                    "'recbole-semprune[plot]')", os.path.basename(path))
        return False
    fig, ax = plt.subplots(**figure)
    draw(ax)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    logger.info("plot: %s", path)
    return True


def scatter(ax, points, xlabel, ylabel):
    """Labelled points ``(name, x, y)``."""
    for name, x, y in points:
        ax.scatter([x], [y], s=45, zorder=3)
        ax.annotate(name, (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)


def lines(ax, rows, x, y):
    """One line per model of ``rows`` (``y`` against ``x``)."""
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        ax.plot([r[x] for r in mine], [r[y] for r in mine], marker="o", label=model)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)


def _accuracy_metric(ok):
    """The metric plots show: the validation metric when the results have it."""
    tested, metric = ok[0].get("test_result") or {}, ok[0].get("valid_metric")
    return metric if metric in tested else next(iter(tested), None)


def write_plot(path, rows, title=None):
    """Bars of seconds/step, peak memory and the test metric per model (results.png)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    metric = _accuracy_metric(ok) if ok else None
    panels = [("train_seconds_per_step", "train s/step"), ("peak_memory_mb", "peak memory (MB)")]
    panels += [(metric, f"test {metric}")] if metric else []

    def draw(axes):
        for ax, (key, label) in zip(axes[0], panels):
            values = [r.get(key, (r.get("test_result") or {}).get(key)) for r in ok]
            ax.bar([r["model"] for r in ok], [v if finite(v) else 0.0 for v in values],
                   color="#4c72b0")
            ax.set_title(label)
            ax.tick_params(axis="x", rotation=30)

    return bool(ok) and plot(path, draw, title, ncols=len(panels),
                             figsize=(4 * len(panels), 3.2), squeeze=False)


def write_plots(output, meta, rows):
    """results.png, tradeoff.png (test accuracy against training seconds per epoch), curves.csv
    and curves.png (every validation of every model)."""
    title = f"{meta['dataset']}, {meta['budget']['mode']}={meta['budget']['value']}, seed " \
            f"{meta['seed']}"
    write_plot(os.path.join(output, "results.png"), rows, title)
    ok = [r for r in rows if r.get("status") == "ok" and r.get("test_result")]
    metric = _accuracy_metric(ok) if ok else None
    points = [(r["model"], r.get("train_seconds_per_epoch"), r["test_result"].get(metric))
              for r in ok]
    points = [p for p in points if finite(p[1]) and finite(p[2])]
    if points:
        plot(os.path.join(output, "tradeoff.png"), lambda ax: scatter(
            ax, points, "training seconds per epoch", f"test {metric}"), title, figsize=(6.5, 4.5))
    curve = [{"model": r["model"], "epoch": p["epoch"], "train_seconds": p["train_seconds"],
              **p["result"]} for r in rows for p in (r.get("valid_curve") or [])]
    metric = next((r.get("valid_metric") for r in rows if r.get("valid_curve")), None)
    if curve:
        write_csv(os.path.join(output, "curves.csv"),
                  list(dict.fromkeys(k for p in curve for k in p)), curve)
    if curve and metric in curve[0]:
        for point in curve:
            point["epochs"] = point["epoch"] + 1

        def draw(ax):
            lines(ax, curve, "epochs", metric)
            ax.set(xlabel="epoch", ylabel=f"validation {metric}")

        plot(os.path.join(output, "curves.png"), draw, title, figsize=(6.5, 4.5))
