"""Benchmark tables: ``results.csv``, ``results.md``, ``results.json`` and the optional PNG."""

import csv
import json
import logging
import math
import os

logger = logging.getLogger("recbole_semprune.benchmark")

# Cost columns, in table order; the metrics (RecBole's names) come after them.
COST_COLUMNS = [
    "model",
    "train_steps",
    "train_seconds_per_step",
    "train_seconds_per_epoch",
    "epoch_time_source",
    "tokens_per_second",
    "padding_share",
    "model_gflops_per_second",
    "matmul_gflops_per_second",
    "utilisation",
    "kept_fraction",
    "peak_memory_mb",
    "eval_seconds",
    "eval_seconds_per_user",
    "params",
]
# (ratio column, the column it divides by the baseline's)
RATIO_COLUMNS = [
    ("train_seconds_per_step_ratio", "train_seconds_per_step"),
    ("train_cpu_seconds_per_step_ratio", "train_cpu_seconds_per_step"),
    ("tokens_per_second_ratio", "tokens_per_second"),
    ("peak_memory_ratio", "peak_memory_mb"),
    ("eval_seconds_ratio", "eval_seconds"),
]
# Context columns, after the metrics and ratios (results.csv only).
EXTRA_COLUMNS = [
    "tokens_per_history",
    "kept_tokens_per_history",
    "train_cpu_seconds_per_step",
    "steps_per_epoch",
    "train_seconds",
    "train_cpu_seconds",
    "memory_before_train_mb",
    "eval_users",
    "eval_peak_memory_mb",
    "build_seconds",
    "status",
    "error",
]
# The columns of results.md (and the table printed at the end), metrics go after them.
MD_COLUMNS = [
    "model",
    "train_steps",
    "train_seconds_per_step",
    "train_seconds_per_step_ratio",
    "train_cpu_seconds_per_step",
    "train_cpu_seconds_per_step_ratio",
    "train_seconds_per_epoch",
    "epoch_time_source",
    "tokens_per_second",
    "tokens_per_second_ratio",
    "padding_share",
    "model_gflops_per_second",
    "matmul_gflops_per_second",
    "utilisation",
    "kept_fraction",
    "peak_memory_mb",
    "peak_memory_ratio",
    "eval_seconds",
    "eval_seconds_per_user",
    "eval_seconds_ratio",
    "params",
]


def metric_names(rows):
    """RecBole's metric keys (``recall@5``, ...) in the order RecBole reports them."""
    names = []
    for row in rows:
        for key in row.get("test_result") or {}:
            if key not in names:
                names.append(key)
    return names


def valid_metric_names(rows):
    names = []
    for row in rows:
        for key in row.get("valid_result") or {}:
            if f"valid_{key}" not in names:
                names.append(f"valid_{key}")
    return names


def _ratio(value, base):
    if not _finite(value) or not _finite(base) or base == 0:
        return None
    return value / base


def _finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def flat_rows(rows, baseline):
    """One flat dict per model: cost figures, ratios to ``baseline``, metrics, context.

    A model that failed after training keeps its training figures (and their ratios).
    """
    base = next((r for r in rows if r["model"] == baseline), {})
    flat = []
    for row in rows:
        out = {key: row.get(key) for key in COST_COLUMNS + EXTRA_COLUMNS}
        for ratio, column in RATIO_COLUMNS:
            out[ratio] = _ratio(row.get(column), base.get(column))
        out.update(row.get("test_result") or {})
        out.update({f"valid_{k}": v for k, v in (row.get("valid_result") or {}).items()})
        flat.append(out)
    return flat


def csv_columns(rows):
    return (
        COST_COLUMNS
        + metric_names(rows)
        + valid_metric_names(rows)
        + [ratio for ratio, _ in RATIO_COLUMNS]
        + EXTRA_COLUMNS
    )


def write_csv(path, rows, baseline):
    columns = csv_columns(rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in flat_rows(rows, baseline):
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})


def _format(column, value):
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        return value
    if not _finite(value):
        return str(value)
    if column.endswith("_ratio"):
        return f"{value:.2f}x"
    if column in ("kept_fraction", "padding_share", "utilisation"):
        return f"{100 * value:.1f}%"
    if column in ("params", "train_steps", "eval_users", "steps_per_epoch"):
        return f"{int(value):,}"
    if column in ("tokens_per_second", "peak_memory_mb", "eval_peak_memory_mb"):
        return f"{value:,.0f}"
    if "@" in column:  # metrics
        return f"{value:.4f}"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def markdown_table(rows, baseline):
    """The results table in GitHub markdown (one line per model, failed models included)."""
    columns = MD_COLUMNS + metric_names(rows) + valid_metric_names(rows)
    lines = [
        "| " + " | ".join(columns) + " |",
        "| "
        + " | ".join("---" if c in ("model", "epoch_time_source") else "---:" for c in columns)
        + " |",
    ]
    for row, flat in zip(rows, flat_rows(rows, baseline)):
        if row.get("status") == "ok":
            cells = [_format(c, flat.get(c)) for c in columns]
        elif row.get("train_steps"):  # failed after training: its training figures stand
            cells = [f"{row['model']} (**failed**)"]
            cells += [_format(c, flat.get(c)) for c in columns[1:]]
        else:
            cells = [row["model"], "**failed**"] + ["—"] * (len(columns) - 2)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _budget_line(meta):
    budget = meta["budget"]
    if budget["mode"] == "epochs":
        return (
            f"{budget['value']} full epoch(s) per model, no early stopping, no checkpoint; "
            "`train_seconds_per_epoch` measured"
        )
    return (
        f"max_steps={budget['value']}: exactly {budget['value']} optimisation steps per model "
        "(the train loader restarts if an epoch is shorter); `train_seconds_per_epoch` "
        "extrapolated as seconds/step x steps per epoch"
    )


def _eval_line(meta, rows):
    ok = [r for r in rows if r.get("status") == "ok"]
    total = ok[0]["eval_users_total"] if ok else None
    mask = meta.get("exclude_seen")
    mask = "" if mask is None else f"; history mask `exclude_seen: {mask}` (every model)"
    if meta.get("eval_max_users"):
        used = ok[0]["eval_users"] if ok else meta["eval_max_users"]
        of = f" of {total:,}" if total else ""
        return (
            f"test split, full ranking, the first {used:,}{of} users of the test loader "
            f"(`--eval_max_users={meta['eval_max_users']}`; the same users for every model)"
            + mask
        )
    return "test split, full ranking, all " + (f"{total:,} " if total else "") + "test users" + mask


def markdown_report(meta, rows):
    """results.md: header (protocol, machine, command), the table, notes and failures."""
    ok = [r for r in rows if r.get("status") == "ok"]
    ran = [r for r in rows if r.get("train_steps")]  # ok, or failed after training
    first = ran[0] if ran else {}
    devices = sorted({f"{r['device']} ({r['device_name']})" for r in ran})
    devices = devices or [meta.get("device", "?")]
    threads = sorted({r["torch_threads"] for r in ran})
    lines = [
        f"# Benchmark: {meta['dataset']}",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}",
        f"- dataset: `{meta['dataset']}` (data_path `{meta['data_path']}`)",
        f"- budget: {_budget_line(meta)}",
        f"- evaluation: {_eval_line(meta, rows)}",
        f"- seed: {meta['seed']} (every model)",
        f"- device: {', '.join(devices)}"
        + (f"; torch threads: {', '.join(map(str, threads))}" if threads else ""),
        f"- versions: torch {first.get('torch_version', meta.get('torch_version'))}, "
        f"recbole {first.get('recbole_version', meta.get('recbole_version'))}, "
        f"recbole_semprune {meta['recbole_semprune_version']}, "
        f"python {first.get('python_version', meta.get('python_version'))}",
        f"- baseline of the `*_ratio` columns: {meta['baseline']}",
        "- models run one after another, each in "
        + (
            "this process (`--in_process`: peak memory not isolated)"
            if meta.get("in_process")
            else "its own fresh process"
        ),
    ]
    loads = [
        f"{r['model']} {r['load_average'][0]} -> {r['load_average'][1]}"
        for r in ran
        if None not in (r.get("load_average") or [None])
    ]
    if loads:
        lines.append(
            "- machine load (1-min load average at the start -> end of each model's training, "
            f"{first.get('cpu_count')} CPUs; above the CPU count wall times are inflated): "
            + ", ".join(loads)
        )
    if meta.get("config_files"):
        lines.append(f"- config files: {', '.join(f'`{f}`' for f in meta['config_files'])}")
    if meta.get("global_overrides"):
        lines.append(
            "- overrides for every model: "
            + ", ".join(f"`{k}={v}`" for k, v in meta["global_overrides"].items())
        )
    for model, overrides in (meta.get("model_overrides") or {}).items():
        if overrides:
            lines.append(
                f"- overrides for {model} only: "
                + ", ".join(f"`{k}={v}`" for k, v in overrides.items())
            )
    lines += ["", markdown_table(rows, meta["baseline"]), "", "Notes:", ""]
    lines += [
        "- `train_seconds_per_step` = training time / steps, from the trainer's per-epoch "
        "figures (data loading, forward, backward, optimiser step; no warm-up excluded, "
        "validation excluded). `train_cpu_seconds_per_step`: the same steps in CPU time of "
        "the model's process (all its threads), which other processes on the machine do not "
        "inflate; compare it between models run with the same `--threads`.",
        "- `peak_memory_mb`: on CPU the peak resident memory (RSS) of the model's process while "
        "training, dataset and interpreter included; on GPU `torch.cuda.max_memory_allocated`.",
        "- `tokens_per_second`: input tokens per training second (items of the input "
        "sequences; semantic-ID models count items x code levels).",
        "- `*_ratio`: this model's figure / the baseline's, from the same invocation. On a "
        "shared CPU read ratios, not absolute times.",
    ]
    fingerprints = {r["eval_users_fingerprint"] for r in ok}
    if len(fingerprints) > 1:
        lines.append(
            "- **warning**: the models were not evaluated on the same users "
            "(their datasets order the test users differently)."
        )
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        lines += ["", "Failures:", ""]
        for row in failed:
            lines.append(f"- {row['model']}: {row.get('error') or 'failed'}")
    return "\n".join(lines) + "\n"


def plot_title(meta):
    budget = meta["budget"]
    return f"{meta['dataset']}, {budget['mode']}={budget['value']}, seed {meta['seed']}"


def pyplot(path):
    """matplotlib's pyplot on the Agg backend, or None (with a log line naming ``path``, the
    plot skipped) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info(
            "matplotlib is not installed: skipping %s (pip install 'recbole-semprune[plot]')",
            os.path.basename(path),
        )
        return None
    return plt


def save_figure(plt, fig, path):
    """Lay out ``fig``, write it to ``path`` as a PNG and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _accuracy_metric(ok):
    """The metric plots show: the validation metric when the results have it."""
    metric = ok[0].get("valid_metric")
    if metric not in (ok[0].get("test_result") or {}):
        metric = next(iter(ok[0].get("test_result") or {}), None)
    return metric


def write_plot(path, rows, title=None):
    """Bars of seconds/step, peak memory and the valid metric per model; needs matplotlib.

    Returns True when the PNG was written, False (with a log line) without matplotlib.
    """
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return False
    plt = pyplot(path)
    if plt is None:
        return False
    metric = _accuracy_metric(ok)
    panels = [("train_seconds_per_step", "train s/step"), ("peak_memory_mb", "peak memory (MB)")]
    if metric:
        panels.append((metric, f"test {metric}"))
    names = [r["model"] for r in ok]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        values = [r.get(key, (r.get("test_result") or {}).get(key)) for r in ok]
        values = [v if _finite(v) else 0.0 for v in values]
        ax.bar(names, values, color="#4c72b0")
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=30)
    if title:
        fig.suptitle(title)
    save_figure(plt, fig, path)
    return True


def write_tradeoff_plot(path, rows, title=None):
    """Test accuracy against training seconds per epoch, one point per model (PNG)."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("test_result")]
    if not ok:
        return False
    metric = _accuracy_metric(ok)
    points = [(r["model"], r.get("train_seconds_per_epoch"), r["test_result"].get(metric))
              for r in ok]
    points = [p for p in points if _finite(p[1]) and _finite(p[2])]
    if not points or (plt := pyplot(path)) is None:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, seconds, value in points:
        ax.scatter([seconds], [value], s=45, zorder=3)
        ax.annotate(name, (seconds, value), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("training seconds per epoch")
    ax.set_ylabel(f"test {metric}")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    save_figure(plt, fig, path)
    return True


def curve_rows(rows):
    """One dict per (model, validation): ``model, epoch, train_seconds`` and the metrics."""
    return [
        {"model": r["model"], "epoch": point["epoch"], "train_seconds": point["train_seconds"],
         **point["result"]}
        for r in rows for point in (r.get("valid_curve") or [])
    ]


def write_curves(csv_path, png_path, rows, title=None):
    """``curves.csv`` (every validation of every model) and the plot of the validation metric
    per epoch. Returns whether the PNG was written; writes nothing without validations."""
    points = curve_rows(rows)
    if not points:
        return False
    columns = list(dict.fromkeys(k for p in points for k in p))
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(points)
    metric = next((r.get("valid_metric") for r in rows if r.get("valid_curve")), None)
    if metric not in points[0] or (plt := pyplot(png_path)) is None:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for model in dict.fromkeys(p["model"] for p in points):
        mine = [p for p in points if p["model"] == model]
        ax.plot([p["epoch"] + 1 for p in mine], [p[metric] for p in mine], marker="o",
                label=model)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    save_figure(plt, fig, png_path)
    return True


def write_json(path, meta, rows):
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
