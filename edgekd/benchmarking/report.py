"""The report: terminal tables for people, report.json for scripts, report.md for reviews,
report.png for the eye. The JSON schema is documented in docs/report-schema.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgekd.errors import atomic_write_text
from edgekd.tasks import TASKS

SCHEMA_VERSION = 7
# (header, key, format) of the quality-and-size table
COLUMNS = [
    ("model", "name", "{}"),
    ("runtime", "runtime", "{}"),
    ("acc %", "accuracy", "{:.2f}"),
    ("F1 %", "macro_f1", "{:.2f}"),
    ("agree %", "agreement", "{:.2f}"),
    ("KL", "kl_to_teacher", "{:.4f}"),
    ("params M", "params_m", "{:.2f}"),
    ("MB", "size_mb", "{:.1f}"),
    ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
    ("+model MB", "model_rss_mb", "{:.0f}"),
]
# (header, key, format) of the speed table
SPEED_COLUMNS = [
    ("model", "name", "{}"),
    ("thr", "threads", "{}"),
    ("p50 ms", "p50_ms", "{:.2f}"),
    ("p90 ms", "p90_ms", "{:.2f}"),
    ("p99 ms", "p99_ms", "{:.2f}"),
    ("IQR %", "relative_iqr", "{:.0f}"),
    ("ex/s", "examples_per_s", "{:.1f}"),
    ("speedup", "speedup", "{:.1f}x"),
    ("vs teacher/target", "speedup_same_target", "{:.2f}x"),
    ("GOP/inf", "gops", "{:.3g}"),
    ("% peak", "fraction_of_peak", "{:.1f}"),
]
# A causal LM's tables: perplexity instead of accuracy, decode speed instead of latency;
# name, runtime, size, memory, threads and speedup as for classifiers.
LM_COLUMNS = COLUMNS[:2] + [("ppl", "perplexity", "{:.2f}"), ("ppl x ref", "perplexity_ratio", "{:.3f}"),
                            ("ppl x teacher", "perplexity_ratio_vs_teacher", "{:.3f}"),
                            ("top-1 agree %", "top1_agreement", "{:.1f}")] + COLUMNS[7:]
LM_SPEED_COLUMNS = SPEED_COLUMNS[:2] + [("ms/token", "p50_ms", "{:.2f}"),
                                        ("prefill t/s", "prefill_tokens_per_second", "{:.1f}"),
                                        ("decode t/s", "decode_tokens_per_second", "{:.1f}"),
                                        *SPEED_COLUMNS[7:9]]
# An image classifier's tables: top-5 beside accuracy, each model's input size beside its speed.
IMAGE_COLUMNS = COLUMNS[:3] + [("top-5 %", "top5_accuracy", "{:.2f}")] + COLUMNS[3:]
IMAGE_SPEED_COLUMNS = SPEED_COLUMNS[:1] + [("input", "input_size", "{}")] + SPEED_COLUMNS[1:]
COLUMNS_BY_TASK = {"text-classification": (COLUMNS, SPEED_COLUMNS), "causal-lm": (LM_COLUMNS, LM_SPEED_COLUMNS),
                   "image-classification": (IMAGE_COLUMNS, IMAGE_SPEED_COLUMNS)}
NAN = float("nan")


def skipped_warnings(skipped: list[dict]) -> list[str]:
    """One warning for each artifact a bench passed over, saying why."""
    return [f"skipped {item['artifact']}: {item['reason']}" for item in skipped]


def add_same_target_speedups(rows: list[dict]) -> None:
    """Each student row's speedup over the teacher in the same form, measured in the same run:
    `student/T` over `teacher/T` (the teacher exported to target T), the student in PyTorch over
    the teacher in PyTorch. Only this ratio isolates what distillation bought; `speedup`, over
    the teacher in PyTorch, mixes in the runtime and quantisation. None without a counterpart."""
    p50 = {row["name"]: row["latency"]["p50_ms"] for row in rows}
    for row in rows:
        name = row["name"]
        counterpart = "teacher" if name == "student" else \
            f"teacher/{name.partition('/')[2]}" if name.startswith("student/") else None
        row["speedup_same_target"] = p50[counterpart] / p50[name] if counterpart in p50 else None


def _task(report: dict) -> str:
    return report.get("task", "text-classification")


def flatten(row: dict) -> dict:
    """One report row as the flat values the tables show (percentages as 0-100)."""
    memory = row.get("memory") or {}
    efficiency = row.get("efficiency") or {}
    quality = row["quality"]
    latency = row["latency"]
    return {
        "name": row["name"], "runtime": row["runtime"], "threads": row.get("threads", "-"),
        "accuracy": 100 * quality.get("accuracy", NAN), "macro_f1": 100 * quality.get("macro_f1", NAN),
        "top5_accuracy": 100 * quality.get("top5_accuracy", NAN), "input_size": _input_size(row),
        "perplexity": quality.get("perplexity", NAN), "perplexity_ratio": row.get("perplexity_ratio", NAN),
        "perplexity_ratio_vs_teacher": row.get("perplexity_ratio_vs_teacher", NAN),
        "top1_agreement": 100 * quality.get("top1_agreement", NAN),
        "prefill_tokens_per_second": latency.get("prefill_tokens_per_second", NAN),
        "decode_tokens_per_second": latency.get("decode_tokens_per_second", NAN),
        "agreement": 100 * quality.get("agreement", NAN),
        "kl_to_teacher": quality.get("kl_to_teacher", NAN),
        "params_m": row["params"] / 1e6 if row.get("params") is not None else NAN,
        "size_mb": row["size_bytes"] / 1e6,
        "peak_rss_mb": memory.get("peak_rss_mb", NAN), "model_rss_mb": memory.get("model_rss_mb", NAN),
        **{key: latency.get(key, NAN) for key in ("p50_ms", "p90_ms", "p99_ms")},
        "relative_iqr": 100 * latency.get("relative_iqr", NAN),
        "examples_per_s": (row.get("throughput") or {}).get("examples_per_s", NAN),
        "speedup": row["speedup"],
        "speedup_same_target": NAN if row.get("speedup_same_target") is None else row["speedup_same_target"],
        "gops": efficiency.get("operations", NAN) / 1e9,
        "fraction_of_peak": 100 * efficiency.get("fraction_of_peak", NAN),
    }


def _input_size(row: dict) -> str | None:
    size = row.get("input_size")
    return None if not size else f"{size['channels']}x{size['height']}x{size['width']}"


def table_rows(report: dict, columns=COLUMNS) -> list[list[str]]:
    return [[_format(fmt, flatten(row)[key]) for _, key, fmt in columns] for row in report["rows"]]


def _format(fmt: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def _titles(report: dict) -> tuple[str, str]:
    """The quality table's title and the speed table's, as the report's task measures."""
    return TITLES_BY_TASK[_task(report)](report["settings"], report["data"])


def _decoder_titles(settings: dict, data: dict) -> tuple[str, str]:
    return (f"edgekd bench: perplexity and size, {data['rows']} held-out texts "
            f"({data['tokens']} predicted tokens, max {settings['max_length']} per text)",
            f"greedy decoding at batch 1 and 1 thread: a {settings['prompt_tokens']}-token prompt, then "
            f"{settings['new_tokens']} tokens; medians of {settings['rounds']} interleaved rounds")


def _image_titles(settings: dict, data: dict) -> tuple[str, str]:
    return (f"edgekd bench: quality and size, {data['rows']} images",
            f"latency at batch 1, each model at its own input size, {settings['repeats']} interleaved "
            f"repeats; throughput at batch {settings.get('throughput_batch_size', '-')}")


def _text_titles(settings: dict, data: dict) -> tuple[str, str]:
    return (f"edgekd bench: quality and size, {data['rows']} examples (max {settings['max_length']} tokens)",
            f"latency at batch 1, {settings['sequence_length']} tokens, {settings['repeats']} interleaved repeats; "
            f"throughput at batch {settings.get('throughput_batch_size', '-')}")


TITLES_BY_TASK = {"text-classification": _text_titles, "image-classification": _image_titles,
                  "causal-lm": _decoder_titles}


QUALITY_CAPTION = ("ort: onnxruntime; acc: accuracy on the labels; agree: same prediction as the teacher; KL: mean "
                   "KL(teacher || model); peak RSS: whole process; +model: added by loading and running")
SAME_TARGET_CAPTION = ("vs teacher/target: over the teacher exported to the same target (--teacher-artifacts), "
                       "in the same run; the student in PyTorch against the teacher in PyTorch")
SPEED_CAPTION = ("speedup: teacher p50 / model p50; " + SAME_TARGET_CAPTION + "; IQR %: spread relative to p50; "
                 "GOP/inf: matrix-multiply and convolution operations per inference; % peak: of the machine's measured matmul peak")
LM_QUALITY_CAPTION = ("ppl: perplexity of the held-out text; x ref: over the model it was made from (the student "
                      "for its exports, the teacher for the student); top-1 agree: same next token as the teacher")
LM_SPEED_CAPTION = ("ms/token: decode time per generated token (1000 / decode t/s); speedup: decode t/s over the "
                    "teacher's; " + SAME_TARGET_CAPTION)
IMAGE_QUALITY_CAPTION = QUALITY_CAPTION.replace("acc: accuracy on the labels;", "acc: top-1 accuracy on the labels; "
                                                "top-5: label among the 5 highest scores (more than 5 classes);")
IMAGE_SPEED_CAPTION = "input: channels x height x width of the pixels the model's own image processor makes; " + SPEED_CAPTION
CAPTIONS_BY_TASK = {"text-classification": (QUALITY_CAPTION, SPEED_CAPTION),
                    "image-classification": (IMAGE_QUALITY_CAPTION, IMAGE_SPEED_CAPTION),
                    "causal-lm": (LM_QUALITY_CAPTION, LM_SPEED_CAPTION)}


def print_table(report: dict, console: Console | None = None) -> None:
    """Both tables, then the warnings and gate results, on the terminal."""
    if console is None:
        console = Console()
        console.width = max(console.width, 120)  # pipes default to 80 columns; keep rows on one line
    quality_title, speed_title = _titles(report)
    (quality_columns, speed_columns), captions = COLUMNS_BY_TASK[_task(report)], CAPTIONS_BY_TASK[_task(report)]
    for title, caption, columns in ((quality_title, captions[0], quality_columns),
                                    (speed_title, captions[1], speed_columns)):
        table = Table(title=title, caption=caption)
        for header, _, _ in columns:
            table.add_column(header, justify="left" if header in ("model", "runtime") else "right")
        for row in table_rows(report, columns):
            table.add_row(*row)
        console.print(table)
    if len(report["settings"].get("sequence_lengths", [])) > 1:
        headers, rows = length_rows(report)
        table = Table(title="latency by sequence length, batch 1")
        for header in headers:
            table.add_column(header, justify="left" if header == "model" else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for warning in report.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}")
    for gate in report.get("gates", []):
        verdict = "[green]pass[/green]" if gate["passed"] else "[red]FAIL[/red]"
        console.print(f"gate {gate['gate']} {gate['artifact']}: {gate['value']:.2f} "
                      f"(limit {gate['limit']:.2f}, from {gate['source']}) {verdict}")


def length_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of p50 latency per sequence length (when several were measured)."""
    lengths = report["settings"].get("sequence_lengths") or [report["settings"]["sequence_length"]]
    headers = ["model"] + [f"p50 ms @{length}" for length in lengths]
    rows = [[row["name"]] + [_format("{:.2f}", row.get("latency_by_length", {}).get(str(length), {})
                                     .get("p50_ms", NAN)) for length in lengths]
            for row in report["rows"]]
    return headers, rows


def _markdown_table(report: dict, columns) -> list[str]:
    headers = [header for header, _, _ in columns]
    return (["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            + ["| " + " | ".join(row) + " |" for row in table_rows(report, columns)])


def markdown(report: dict) -> str:
    settings, machine = report["settings"], report["machine"]
    (quality_columns, speed_columns), captions = COLUMNS_BY_TASK[_task(report)], CAPTIONS_BY_TASK[_task(report)]
    quality_title, speed_title = _titles(report)
    lines = ["# edgekd bench report", "", f"{quality_title}; {speed_title}, {settings['threads']} thread(s). "
             "Speedup is relative to the teacher in PyTorch fp32.", "", "## Quality and size", ""]
    lines += _markdown_table(report, quality_columns) + ["", captions[0], "", "## Speed", ""]
    lines += _markdown_table(report, speed_columns) + ["", captions[1], ""]
    if len(settings.get("sequence_lengths", [])) > 1:
        headers, rows = length_rows(report)
        lines += ["## Latency by sequence length", "", "| " + " | ".join(headers) + " |",
                  "|" + "---|" * len(headers)] + ["| " + " | ".join(row) + " |" for row in rows] + [""]
    if report.get("gates"):
        lines += ["## Gates", "", "| gate | model | value | limit | from | result |", "|---|---|---|---|---|---|"]
        lines += [f"| {g['gate']} | {g['artifact']} | {g['value']:.2f} | {g['limit']:.2f} | "
                  f"{g['source']} | {'pass' if g['passed'] else 'FAIL'} |" for g in report["gates"]]
        lines.append("")
    if report.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    flags = ", ".join(machine.get("flags") or []) or "none found"
    lines += [f"Machine: {machine['cpu']} ({flags}), {machine['cores']} cores; torch "
              f"{machine['torch']}, onnxruntime {machine['onnxruntime']}.", ""]
    return "\n".join(lines)


def _json_safe(value):
    """NaN (a metric that could not be measured) as null: strict JSON parsers reject NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def write_report(report: dict, folder: Path, *, plot: bool = True) -> None:
    """report.json, report.md and (with `plot`) report.png into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "report.json", json.dumps(_json_safe(report), indent=2) + "\n")
    atomic_write_text(folder / "report.md", markdown(report))
    if plot and TASKS[_task(report)].contract == "classifier":  # accuracy against latency
        from edgekd.benchmarking.plot import write_plot

        write_plot(report, folder / "report.png")
