"""``eval``'s results for a reader: text tables for the terminal and one PNG of charts."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np


def results_table(
    classifiers: dict[str, dict[str, Any]], not_applicable: dict[str, str] | None = None
) -> str:
    """One row per classifier; a baseline in ``not_applicable`` gets a row saying why it has no scores."""
    labels = next(iter(classifiers.values()))["labels"]
    header = ["classifier", "n", "accuracy", "macro-F1", *(f"F1 {label.lower()[:3]}" for label in labels)]
    width = max(12, *(len(name) for name in [*classifiers, *(not_applicable or {})]))
    rows = [[f"{header[0]:<{width}}", *(f"{cell:>9}" for cell in header[1:])]]
    for name, m in classifiers.items():
        cells = [m["n"], f"{m['accuracy']:.4f}", f"{m['macro_f1']:.4f}"]
        cells += [f"{m['per_class'][label]['f1']:.4f}" for label in m["labels"]]
        rows.append([f"{name:<{width}}", *(f"{cell:>9}" for cell in cells)])
    for name, why in (not_applicable or {}).items():
        rows.append([f"{name:<{width}}", why])
    return "\n".join("  ".join(row) for row in rows)


def confusion_table(name: str, metrics: dict[str, Any]) -> str:
    """``metrics["confusion"]`` as text: a row per true label, a column per predicted label."""
    short = [label.lower()[:3] for label in metrics["labels"]]
    lines = [f"{name}: confusion matrix (rows: true label, columns: predicted)"]
    lines.append("       " + "".join(f"{label:>8}" for label in short))
    for label, counts in zip(short, metrics["confusion"], strict=True):
        lines.append(f"  {label:<5}" + "".join(f"{count:>8}" for count in counts))
    return "\n".join(lines)


def heldout_table(heldout: dict[str, Any]) -> str:
    entries = heldout["classifiers"]
    topics = list(next(iter(entries.values()))["per_topic"])
    rows = [(topic, [entries[name]["per_topic"][topic] for name in entries]) for topic in topics]
    rows.append(
        (
            "mean of topics",
            [{"macro_f1": e["mean_macro_f1"], "accuracy": e["mean_accuracy"]} for e in entries.values()],
        )
    )
    rows.append(("all held-out tweets", [e["pooled"] for e in entries.values()]))
    first = max(len(name) for name, _ in rows)
    widths = [max(len(name), 15) for name in entries]
    lines = [
        "unseen topics, macro-F1 / accuracy on the held-out topic:",
        f"  {heldout['method']}",
        f"{'topic':<{first}}  " + "  ".join(f"{name:>{w}}" for name, w in zip(entries, widths, strict=True)),
    ]
    for name, cells in rows:
        scores = (f"{c['macro_f1']:.4f} / {c['accuracy']:.4f}" for c in cells)
        lines.append(
            f"{name:<{first}}  " + "  ".join(f"{cell:>{w}}" for cell, w in zip(scores, widths, strict=True))
        )
    return "\n".join(lines)


def _reference_rows(reference: dict[str, Any]) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
    """The classifier names of ``seen_topics_reference`` (trained without first), and both columns."""
    without, with_ = reference["without_these_topics"], reference["with_these_topics"]
    return list(without) + [name for name in with_ if name not in without], without, with_


def reference_table(reference: dict[str, Any]) -> str:
    names, without, with_ = _reference_rows(reference)
    width = max(12, *(len(name) for name in names))
    lines = [
        f"the same {reference['n']} held-out-topic tweets, macro-F1 when trained without / with their topics:",
        f"{'classifier':<{width}}  {'without':>9}  {'with':>9}",
    ]
    for name in names:
        cells = (f"{entry[name]['macro_f1']:.4f}" if name in entry else "-" for entry in (without, with_))
        lines.append(f"{name:<{width}}  " + "  ".join(f"{cell:>9}" for cell in cells))
    lines += [f"note: {note}" for note in reference["notes"]]
    return "\n".join(lines)


def plot_results(
    classifiers: dict[str, dict[str, Any]],
    heldout: dict[str, Any] | None,
    path: Path,
    reference: dict[str, Any] | None = None,
    scored_on: str = "test split",
    notes: list[str] | None = None,
) -> None:
    """A PNG: one row-normalised confusion matrix per classifier (cells show counts), a bar chart
    of accuracy and macro-F1, per-topic macro-F1 bars when held-out topics were evaluated,
    without/with-the-topics macro-F1 bars for ``seen_topics_reference``'s tweets, and ``notes``
    (e.g. a baseline that was not applicable) as the figure's title."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    names = list(classifiers)
    columns = min(4, len(names))
    matrix_rows = -(-len(names) // columns)
    chart_rows = 1 + (heldout is not None) + (reference is not None)
    figure = plt.figure(figsize=(4.2 * columns, 3.8 * matrix_rows + 3.4 * chart_rows), layout="constrained")
    grid = figure.add_gridspec(
        matrix_rows + chart_rows, columns, height_ratios=[1] * matrix_rows + [0.9] * chart_rows
    )
    if notes:
        # ~12 characters an inch at 8 points: each note wrapped to the figure's width.
        figure.suptitle("\n".join(textwrap.fill(note, 11 * 4 * columns) for note in notes), fontsize=8)
    for index, name in enumerate(names):
        labels = classifiers[name]["labels"]
        short = [label[:3].lower() for label in labels]
        axes = figure.add_subplot(grid[index // columns, index % columns])
        counts = np.array(classifiers[name]["confusion"], dtype=float)
        share = counts / counts.sum(axis=1, keepdims=True).clip(min=1)
        axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(labels)):
            for j in range(len(labels)):
                axes.text(
                    j,
                    i,
                    f"{int(counts[i, j])}\n{share[i, j]:.0%}",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if share[i, j] > 0.6 else "black",
                )
        axes.set_xticks(range(len(labels)), short)
        axes.set_yticks(range(len(labels)), short)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        axes.set_title(f"{name}\nmacro-F1 {classifiers[name]['macro_f1']:.3f}", fontsize=10)

    bars = figure.add_subplot(grid[matrix_rows, :])
    x = np.arange(len(names))
    for offset, metric, label in ((-0.2, "accuracy", "accuracy"), (0.2, "macro_f1", "macro-F1")):
        values = [classifiers[name][metric] for name in names]
        drawn = bars.bar(x + offset, values, width=0.4, label=label)
        bars.bar_label(drawn, fmt="%.3f", fontsize=8)
    bars.set_xticks(x, names, rotation=15, ha="right")
    bars.set_ylim(0, 1.15)  # headroom above the bars for the legend
    bars.set_title(f"{scored_on}: accuracy and macro-F1")
    bars.legend(loc="upper center", ncols=2, frameon=False)

    if heldout is not None:
        topics_axes = figure.add_subplot(grid[matrix_rows + 1, :])
        entries = heldout["classifiers"]
        topics = list(next(iter(entries.values()))["per_topic"])
        x = np.arange(len(topics) + 1)
        width = 0.8 / len(entries)
        for k, (name, entry) in enumerate(entries.items()):
            values = [entry["per_topic"][t]["macro_f1"] for t in topics] + [entry["mean_macro_f1"]]
            drawn = topics_axes.bar(x - 0.4 + width * (k + 0.5), values, width=width, label=name)
            topics_axes.bar_label(drawn, fmt="%.2f", fontsize=8)
        topics_axes.set_xticks(x, [*topics, "mean"])
        topics_axes.set_ylim(0, 1.15)
        topics_axes.set_title("unseen topics (leave-one-topic-out): macro-F1 on the held-out topic")
        topics_axes.legend(loc="upper center", ncols=len(entries), frameon=False)

    if reference is not None:
        _plot_reference(figure.add_subplot(grid[matrix_rows + chart_rows - 1, :]), reference)

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_reference(axes: Any, reference: dict[str, Any]) -> None:
    names, without, with_ = _reference_rows(reference)
    x = np.arange(len(names))
    for offset, entry, label in (
        (-0.2, without, "trained without these topics"),
        (0.2, with_, "trained with them"),
    ):
        values = [entry[name]["macro_f1"] if name in entry else np.nan for name in names]
        drawn = axes.bar(x + offset, values, width=0.4, label=label)
        axes.bar_label(drawn, labels=["" if np.isnan(v) else f"{v:.3f}" for v in values], fontsize=8)
    axes.set_xticks(x, names, rotation=15, ha="right")
    axes.set_ylim(0, 1.15)
    axes.set_title(
        f"the same {reference['n']} held-out-topic tweets:\nmacro-F1 trained without / with their topics"
    )
    axes.legend(loc="upper center", ncols=2, frameon=False, fontsize=8)
