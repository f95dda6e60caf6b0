"""report.png: accuracy against latency with the Pareto front, and size per model."""

from __future__ import annotations

import math
from pathlib import Path

from edgekd.errors import temporary_name

FORMAT_MARKERS = {"pytorch": "o", "onnx": "s", "ort": "D", "pte": "^", "tflite": "v"}


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: lower latency and higher accuracy.

    `points` are (latency, accuracy); the result is ordered by latency. A point is on the
    front when every faster point is strictly less accurate.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_accuracy = [], -math.inf
    for index in order:
        if points[index][1] > best_accuracy:
            front.append(index)
            best_accuracy = points[index][1]
    return front


def write_plot(report: dict, path: Path) -> None:
    """Two panels: accuracy (%) vs p50 latency (ms, log scale) with the front; size (MB)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    rows = [row for row in report["rows"] if not math.isnan(row["quality"]["accuracy"])]
    figure, (speed_axis, size_axis) = plt.subplots(1, 2, figsize=(12, 5),
                                                   gridspec_kw={"width_ratios": [3, 2]})
    colours = {row["name"]: f"C{i % 10}" for i, row in enumerate(report["rows"])}
    _accuracy_panel(speed_axis, rows, report, colours)
    _size_panel(size_axis, report["rows"], colours)
    figure.suptitle(f"edgekd bench: {report['data']['rows']} examples, "
                    f"{report['machine']['cpu']}")
    figure.tight_layout()
    temporary = temporary_name(Path(path))
    figure.savefig(temporary, format="png", dpi=110)
    plt.close(figure)
    temporary.replace(path)


def _accuracy_panel(axis, rows: list[dict], report: dict, colours: dict) -> None:
    from matplotlib.ticker import ScalarFormatter

    points = [(row["latency"]["p50_ms"], 100 * row["quality"]["accuracy"]) for row in rows]
    for row, (latency, accuracy) in zip(rows, points):
        # Names are in the legend, keyed by colour: labels beside points overlap when
        # two models are equally accurate.
        axis.scatter([latency], [accuracy], s=70, marker=FORMAT_MARKERS.get(row["format"], "o"),
                     color=colours[row["name"]], label=f"{row['name']} ({row['runtime']})",
                     zorder=3, edgecolors="black", linewidths=0.5)
    front = pareto_front(points)
    if front:
        axis.step([points[i][0] for i in front], [points[i][1] for i in front], where="post",
                  color="grey", linestyle="--", linewidth=1, label="Pareto front", zorder=2)
    settings = report["settings"]
    axis.set_xscale("log")
    for axis_format in (axis.xaxis.set_major_formatter, axis.xaxis.set_minor_formatter):
        axis_format(ScalarFormatter())  # plain milliseconds, not 2x10^0
    inputs = (f"{settings['sequence_length']} tokens" if settings.get("sequence_length")
              else "each model's input size")
    axis.set_xlabel(f"latency p50 (ms, log scale), batch 1, {inputs}")
    axis.set_ylabel("accuracy (%)")
    axis.set_title("accuracy vs latency (up and left is better)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7, loc="best")


def _size_panel(axis, rows: list[dict], colours: dict) -> None:
    names = [row["name"] for row in rows]
    sizes = [row["size_bytes"] / 1e6 for row in rows]
    bars = axis.barh(names, sizes, color=[colours[name] for name in names], edgecolor="black",
                     linewidth=0.5, label="model file (weights for PyTorch folders)")
    axis.bar_label(bars, labels=[f"{s:.3g}" for s in sizes], fontsize=8, padding=2)
    axis.invert_yaxis()  # same order as the table, top to bottom
    axis.set_xlabel("size on disk (MB)")
    axis.set_title("model size")
    axis.legend(fontsize=7, loc="lower right")
    axis.grid(True, axis="x", alpha=0.3)
