"""The tables of README.md and docs/*.md, printed from the committed results under
benchmarks/results/. A page holds each between `<!-- table: NAME -->` and `<!-- /table -->`.

    python benchmarks/readme_tables.py           # print every table
    python benchmarks/readme_tables.py --write   # rewrite them in README.md and docs/*.md

Each table is followed by the CPU it was measured on (model, cores and flags, from the result).
tests/test_readme_numbers.py checks that every table on those pages is one of these, exactly.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _times(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def cpu_line(machine: dict) -> str:
    return (f"{machine['cpu']}, {machine['usable_cores']} cores, flags {' '.join(machine['flags'])}; "
            f"onnxruntime {machine['onnxruntime']}, torch {machine['torch']}")


def markdown(headers: list[str], rows: list[list[str]], machine: dict) -> str:
    """A table with its separator row, then the CPU it was measured on."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + f"\n\nMeasured on: {cpu_line(machine)}."


SPEEDUPS = ["speedup over teacher (PyTorch)", "speedup over teacher, same target"]


def classifier_table(result: dict) -> str:
    headers = ["model", "runtime", "test accuracy", "agreement with teacher", "size", "p50 latency", *SPEEDUPS]
    rows = [[row["name"], row["runtime"], f"{100 * row['accuracy']:.1f}%", f"{100 * row['agreement']:.1f}%",
             f"{row['size_bytes'] / 1e6:.1f} MB", f"{row['p50_ms']:.1f} ms", f"{row['speedup']:.2f}×",
             _times(row.get("speedup_same_target"))] for row in result["headline"]["table"]]
    return markdown(headers, rows, result["machine"])


def causal_lm_table(result: dict) -> str:
    headers = ["model", "runtime", "held-out perplexity", "size", "peak memory", "decode ms/token", *SPEEDUPS]
    rows = []
    for row in result["report"]["rows"]:
        memory = (row.get("memory") or {}).get("peak_rss_mb")
        rows.append([row["name"], row["runtime"], f"{row['quality']['perplexity']:.1f}",
                     f"{row['size_bytes'] / 1e6:.0f} MB", "–" if memory is None else f"{memory:.0f} MB",
                     f"{row['latency']['p50_ms']:.1f} ms", f"{row['speedup']:.2f}×",
                     _times(row.get("speedup_same_target"))])
    return markdown(headers, rows, result["report"]["machine"])


STARTS = {"slice": "sliced from the teacher", "random": "random weights",
          "layer cut": "teacher layers 0 and 5, full width"}


def _start(name: str, row: dict) -> str:
    start = STARTS[row["init"]]
    if row.get("sliced_from", "teacher") != "teacher":
        start = f"sliced from the {row['sliced_from'].split(',')[0]} student"
    if row.get("vocabulary"):
        start += f", vocabulary trimmed to {row['vocabulary']['kept_tokens']:,} tokens"
    return start


def shrink_table(result: dict) -> str:
    """Every student but the recipe variants and the first step of a stepwise cut."""
    headers = ["student (layers x hidden)", "starts from", "parameters", "test accuracy (PyTorch)",
               "int8 test accuracy", "int8 size", "int8 p50", SPEEDUPS[0]]
    rows = [[name.replace(" + trimmed", ", trimmed"), _start(name, row), f"{row['params'] / 1e6:.1f}M",
             f"{100 * row['test_accuracy']:.1f}%", f"{100 * row['int8_accuracy']:.1f}%",
             f"{row['int8_size_bytes'] / 1e6:.1f} MB", f"{row['int8_p50_ms']:.2f} ms",
             f"{row['int8_speedup_over_teacher_pytorch']:.1f}×"] for name, row in result["students"].items()
            if not row.get("recipe") and "step 1" not in name]
    return markdown(headers, rows, result["machine"])


def _points(entry: dict) -> str:
    low, high = entry["ci95_points"]
    return f"{entry['difference_points']:+.1f} ({low:+.1f} to {high:+.1f})"


def shrink_comparisons(result: dict) -> str:
    """Each paired difference of test accuracy, in points, with its 95% interval."""
    headers = ["comparison", "difference in test accuracy, points (95% CI)", "beyond noise"]
    entries = [*result["sliced_vs_random"].values(), *result.get("trimmed_vs_untrimmed", {}).values(),
               *result.get("recipes_vs_kd_lr_3e-4", {}).values()]
    if result.get("two_steps_vs_one"):
        entries.append(result["two_steps_vs_one"])
    rows = [[f"{entry['first']} − {entry['second']}", _points(entry), "yes" if entry["beyond_noise"] else "no"]
            for entry in entries]
    return markdown(headers, rows, result["machine"])


def lm_shrink_table(result: dict) -> str:
    headers = ["student", "non-embedding parameters", "share of the teacher's", "vocabulary",
               "perplexity before distillation", "held-out perplexity", "int4 perplexity", "int4 decode tokens/s",
               SPEEDUPS[0]]
    first = next(iter(result["students"].values()))
    rows = [["teacher", f"{result['teacher_non_embedding_params'] / 1e6:.1f}M", "100%", "49,152",
             "–", f"{result['teacher_perplexity']:.1f}", "–", f"{first['teacher_decode_tokens_per_second']:.1f}",
             "1.00×"]]
    for name, row in result["students"].items():
        vocabulary = row.get("vocabulary")
        rows.append([name, f"{row['non_embedding_params'] / 1e6:.1f}M",
                     f"{100 * row['non_embedding_share_of_teacher']:.0f}%",
                     f"{vocabulary['kept_tokens']:,}" if vocabulary else "49,152",
                     "–" if vocabulary else f"{row['perplexity_before_distillation']:.1f}",
                     f"{row['perplexity']:.1f}", f"{row['int4_perplexity']:.1f}",
                     f"{row['int4_decode_tokens_per_second']:.1f}", f"{row['int4_speedup_over_teacher_pytorch']:.2f}×"])
    return markdown(headers, rows, result["machine"])


def phones_table(result: dict) -> str:
    """ExecuTorch int8 against fp32, the tokenizer inside the graph, and arm64 verification."""
    executorch = result["executorch"]
    headers = ["what", "measured", "goal", "met"]
    fp32, int8 = executorch["fp32"], executorch["int8"]
    rows = [["ExecuTorch int8 .pte size", f"{int8['size_bytes'] / 1e6:.1f} MB of {fp32['size_bytes'] / 1e6:.1f} MB: "
             f"{executorch['size_ratio']:.2f}×", "≤ 0.35×", _yes(result["goals"]["pte_int8_size_at_most_0.35x"])],
            ["ExecuTorch int8 test accuracy", f"{int8['test_accuracy']:.1f}% (fp32 .pte {fp32['test_accuracy']:.1f}%)",
             "within 1 point", _yes(result["goals"]["pte_int8_accuracy_within_1_point"])],
            ["ExecuTorch int8 p50, 128 tokens", f"{int8['latency']['p50_ms']:.2f} ms (fp32 {fp32['latency']['p50_ms']:.2f} ms): "
             f"{executorch['p50_ratio']:.2f}×", "≤ 0.8×", _yes(result["goals"]["pte_int8_p50_at_most_0.8x"])]]
    for target, entry in result["with_tokenizer"].items():
        if not isinstance(entry, dict) or "timing" not in entry:
            continue
        cut, article = entry["timing"]["cut"], entry["timing"]["article"]
        rows += [[f"{target} + tokenizer: same predictions", f"{entry['same_predictions']} of {entry['test_rows']}",
                  "all", _yes(entry["same_predictions"] == entry["test_rows"])],
                 [f"{target} + tokenizer: p50, {cut['tokens']}-token text",
                  f"{cut['latency_with']['p50_ms']:.2f} ms against {cut['latency_without']['p50_ms']:.2f} ms: "
                  f"{cut['p50_ratio']:.2f}×", "≤ 1.15×", _yes(cut["p50_ratio"] <= 1.15)],
                 [f"{target} + tokenizer: p50, whole article",
                  f"{article['latency_with']['p50_ms']:.2f} ms against {article['latency_without']['p50_ms']:.2f} ms: "
                  f"{article['p50_ratio']:.2f}×", "–", "–"]]
        for setting, label in (("non_ascii", "article with a £ sign"),
                               ("typographic", "text with ’ (the regex runs)")):
            timed = entry["timing"].get(setting)
            if timed:
                rows.append([f"{target} + tokenizer: p50, {timed['tokens']}-token {label}",
                             f"{timed['latency_with']['p50_ms']:.2f} ms against "
                             f"{timed['latency_without']['p50_ms']:.2f} ms: {timed['p50_ratio']:.2f}×", "–", "–"])
    for target, verified in result["arm64"].items():
        cores = ", ".join(f"{core} agreement {entry['agreement']:.1f}%" for core, entry in verified["cores"].items())
        rows.append([f"{target} on arm64 (emulated)", f"max logit error {verified['max_abs_logit_error']:.4f}; {cores}",
                     "passes", _yes(verified["passed"])])
    return markdown(headers, rows, result["machine"])


def images_table(result: dict) -> str:
    """The image demo's rows: each model at its own input size."""
    demo = result["demo"]
    headers = ["model", "runtime", "input", "test accuracy", "top-5", "agreement with teacher", "size",
               "MFLOP/inference", "p50 latency", *SPEEDUPS]
    rows = []
    for row in demo["table"]:
        size = row["input"]
        rows.append([row["name"], row["runtime"], f"{size['height']}×{size['width']}", f"{100 * row['accuracy']:.1f}%",
                     f"{100 * row['top5_accuracy']:.1f}%", f"{100 * row['agreement']:.1f}%",
                     f"{row['size_bytes'] / 1e6:.1f} MB",
                     "–" if row["operations"] is None else f"{row['operations'] / 1e6:.1f}",
                     f"{row['p50_ms']:.2f} ms", f"{row['speedup']:.2f}×", _times(row.get("speedup_same_target"))])
    return markdown(headers, rows, demo["machine"])


def images_goals(result: dict) -> str:
    demo, measured = result["demo"], result["demo"]["measured"]
    rows = [["int8 student's test accuracy over the teacher's",
             f"{100 * measured['int8_accuracy']:.1f}% / {100 * measured['teacher_accuracy']:.1f}%: "
             f"{100 * measured['int8_accuracy_ratio']:.1f}%", "≥ 98%", _yes(demo["met"]["int8_accuracy_ratio"])],
            ["int8 student's speed over the teacher in PyTorch", f"{measured['int8_speedup_over_teacher_pytorch']:.1f}×",
             "≥ 10×", _yes(demo["met"]["int8_speedup_over_teacher_pytorch"])],
            ["int8 student's size over the teacher's", f"{measured['int8_size_ratio']:.3f}×", "≤ 0.1×",
             _yes(demo["met"]["int8_size_ratio"])],
            ["static int8 p50 over the fp32 export's", f"{measured['int8_p50_over_fp32_export']:.2f}×", "≤ 0.7×",
             _yes(demo["met"]["int8_p50_over_fp32_export"])],
            ["teacher's operations over the student's", f"{measured['teacher_operations_over_student']:.1f}×", "≥ 10×",
             _yes(demo["met"]["teacher_operations_over_student"])]]
    kd = result.get("kd_vs_ce")
    if kd:
        low, high = kd["ci95"]
        rows.append([f"KD − CE test accuracy, {kd['labelled']:,} labels + {kd['unlabelled']:,} unlabelled, "
                     f"{len(kd['runs'])} seeds", f"{100 * kd['mean_difference']:+.1f} points ({100 * low:+.1f} to "
                     f"{100 * high:+.1f}); KD {100 * kd['kd_mean']:.1f}%, CE {100 * kd['ce_mean']:.1f}%",
                     "beyond noise", _yes(low > 0)])
    return markdown(["what", "measured", "goal", "met"], rows, demo["machine"])


def _yes(value: bool) -> str:
    return "yes" if value else "**no**"


def lm_pte_table(result: dict) -> str:
    """The causal-LM demo student as ExecuTorch programs beside its int4 ONNX export."""
    headers = ["model", "runtime", "held-out perplexity", "size", "decode tokens/s", SPEEDUPS[0]]
    rows = [[row["name"], row["runtime"], f"{row['perplexity']:.1f}", f"{row['size_bytes'] / 1e6:.0f} MB",
             f"{row['decode_tokens_per_second']:.1f}", f"{row['speedup']:.2f}×"] for row in result["rows"]]
    return markdown(headers, rows, result["machine"])


def lm_gguf_table(result: dict) -> str:
    """The causal-LM demo student in llama.cpp beside its int4 ONNX export, and the teacher's own Q4_K_M."""
    headers = ["model", "runtime", "held-out perplexity", "size", "decode tokens/s", SPEEDUPS[0], SPEEDUPS[1],
               "peak memory"]
    rows = [[row["name"], row["runtime"], f"{row['perplexity']:.1f}", f"{row['size_bytes'] / 1e6:.0f} MB",
             f"{row['decode_tokens_per_second']:.1f}", f"{row['speedup']:.2f}×", _times(row["speedup_same_target"]),
             "–" if row["peak_rss_mb"] is None else f"{row['peak_rss_mb']:.0f} MB"] for row in result["rows"]]
    return markdown(headers, rows, result["machine"])


def scale_table(result: dict) -> str:
    """`distill --max-steps 50` on 20k to 2M rows: memory, time to the first step, samples/s."""
    sizes = [str(size) for size in result["sizes"]]
    headers = ["measure", *[f"{int(size):,} rows" for size in sizes], "largest ÷ smallest", "goal"]
    goals = {"peak_rss_mb": f"≤ {result['goals']['peak_rss']}×", "first_step_seconds":
             f"≤ {result['goals']['first_step']}× and < {result['goals']['first_step_seconds']:.0f} s",
             "samples_per_second": f"≥ {result['goals']['samples_per_second']}× (warm)", "peak_anonymous_mb": "–"}
    formats = {"peak_rss_mb": "{:.0f} MB", "peak_anonymous_mb": "{:.0f} MB", "first_step_seconds": "{:.1f} s",
               "samples_per_second": "{:.0f}"}
    names = {"peak_rss_mb": "peak RSS", "peak_anonymous_mb": "peak RSS less mapped files", "first_step_seconds":
             "time to the first step", "samples_per_second": "samples/s"}
    rows = [[f"{names[key]}, {mode} cache", *[formats[key].format(result["table"][size][f"{mode}_{key}"]) for size in sizes],
             f"{result['ratios_largest_to_smallest'][f'{mode}_{key}']:.2f}×", goals[key]]
            for key in formats for mode in ("cold", "warm")]
    return markdown(headers, rows, result["machine"])


def scale_top_k_table(result: dict) -> str:
    """The causal-LM top-k cache built over 1M to 50M tokens: peak memory and bytes per token."""
    headers = ["tokens", "text", "peak RSS", "peak RSS less mapped files", "cache", "cache bytes per token"]
    rows = [[f"{row['tokens']:,}", f"{row['text_mb']:.0f} MB", f"{row['peak_rss_mb']:.0f} MB",
             f"{row['peak_anonymous_mb']:.0f} MB" if "peak_anonymous_mb" in row else "–",
             f"{row['cache_bytes'] / 1e9:.1f} GB", f"{row['bytes_per_token']:.1f}"] for row in result["rows"]]
    return markdown(headers, rows, result["machine"])


ANCHORS = [["TinyBERT-4 (published; SST-2, teacher BERT-base)", "4 x 312", "14.5M", "92.6%", "99%", "–", "–",
            "9.4×", "–"],
           ["DistilBERT (published; GLUE, teacher BERT-base)", "6 x 768", "66M", "–", "97%", "–", "–", "1.6×", "–"]]


def real_teacher_table(result: dict) -> str:
    """The fine-tuned all-mpnet-base-v2 teacher, its int8 export and every student's int8
    export on the held-out movies, beside the published anchors."""
    length = str(result["test_median_tokens"])
    headers = ["model", "layers x hidden", "parameters", "int8 test accuracy", "share of teacher (95% CI, points)",
               "int8 size", "p50 at 128 tokens", "speedup over teacher (PyTorch), 128 / " + length + " tokens",
               "speedup over teacher int8, 128 tokens"]
    teacher = result["teacher"]
    first = next(iter(result["students"].values()))
    rows = [["teacher (fine-tuned, PyTorch fp32)", "12 x 768", f"{teacher['params'] / 1e6:.1f}M",
             f"{100 * teacher['test_accuracy']:.1f}% (fp32)", "100%", f"{first['teacher_size_bytes'] / 1e6:.0f} MB",
             f"{first['teacher_p50_ms']['128']:.1f} ms",
             "1×", "–"],
            ["teacher/onnx-int8", "12 x 768", f"{teacher['params'] / 1e6:.1f}M",
             f"{100 * teacher['int8_test_accuracy']:.1f}%",
             f"{100 * teacher['int8_test_accuracy'] / teacher['test_accuracy']:.1f}%",
             f"{first['teacher_int8_size_bytes'] / 1e6:.0f} MB",
             f"{first['teacher_int8_p50_ms']['128']:.1f} ms",
             f"{first['teacher_p50_ms']['128'] / first['teacher_int8_p50_ms']['128']:.1f}×", "1×"]]
    for name, row in result["students"].items():
        low, high = row["vs_teacher"]["ci95_points"]
        shape = name.split(" ")[0].replace("x", " x ")
        rows.append([name, shape, f"{row['params'] / 1e6:.1f}M", f"{100 * row['int8_accuracy']:.1f}%",
                     f"{100 * row['share_of_teacher']:.1f}% ({low:+.1f} to {high:+.1f})",
                     f"{row['int8_size_bytes'] / 1e6:.1f} MB", f"{row['int8_p50_ms']['128']:.2f} ms",
                     f"{row['speedup_over_teacher_pytorch']['128']:.1f}× / "
                     f"{row['speedup_over_teacher_pytorch'][length]:.1f}×",
                     f"{row['speedup_over_teacher_int8']['128']:.1f}×"])
    return markdown(headers, rows + ANCHORS, result["machine"])


def real_teacher_goals(result: dict) -> str:
    """Issue #29's goals on the held-out movies (int8, 1 thread, batch 1, 128 tokens)."""
    headers = ["goal", "best student", "achieved", "met"]
    names = {"at_20x": "≥ 99% of the teacher at ≥ 20× its PyTorch speed",
             "at_50x": "≥ 97% of the teacher at ≥ 50× its PyTorch speed",
             "vs_teacher_int8": "≥ 98% of the teacher's int8 export at ≥ 8× its speed"}
    rows = [[names[goal], entry["student"] or "none that fast",
             "–" if entry["achieved_share"] is None else f"{100 * entry['achieved_share']:.1f}%", _yes(entry["met"])]
            for goal, entry in result["goals"].items() if goal in names]
    rows += [[f"sliced {shape} beats the same shape from random weights", f"{shape} sliced", _points(entry),
              _yes(entry["beyond_noise"] and entry["difference_points"] > 0)]
             for shape, entry in result["sliced_vs_random"].items()]
    rows += [[f"{entry['first']} beats {entry['second']} (kept as a default only if so)", entry["first"],
              _points(entry), _yes(entry["beyond_noise"] and entry["difference_points"] > 0)]
             for entry in result.get("variants", {}).values()]
    return markdown(headers, rows, result["machine"])


def litert_table(result: dict) -> str:
    """LiteRT beside ONNX Runtime and ExecuTorch on each demo student: size, accuracy, p50."""
    headers = ["demo student", "artifact", "runtime", "test accuracy", "drop vs student (95% CI), points", "size",
               "p50 latency", "p50 over the fastest"]
    rows = []
    for demo, entry in result.items():
        by_name = {row["name"]: row for row in entry["report"]["rows"]}
        for target, over in entry["measured"]["p50_over_fastest"].items():
            row = by_name[f"student/{target}"]
            low, high = row["accuracy_drop_ci95"]
            rows.append([f"{demo} ({entry['test_rows']} test rows)", target, row["runtime"],
                         f"{100 * row['quality']['accuracy']:.1f}%",
                         f"{row['accuracy_drop']:+.2f} ({low:+.2f} to {high:+.2f})",
                         f"{row['size_bytes'] / 1e6:.2f} MB", f"{row['latency']['p50_ms']:.2f} ms", f"{over:.2f}×"])
    return markdown(headers, rows, next(iter(result.values()))["report"]["machine"])


def litert_goals(result: dict) -> str:
    """Issue #30's LiteRT goals on each demo student."""
    headers = ["demo student", "goal", "measured", "met"]
    rows = []
    for demo, entry in result.items():
        measured, met = entry["measured"], entry["met"]
        rows.append([demo, "litert-int8 within the int8 accuracy budget (1 point)",
                     f"{measured['litert_int8_accuracy_drop_points']:+.2f} points",
                     _yes(met["litert_int8_within_budget"])])
        rows.append([demo, "litert-int8 size ≤ 0.3× the litert fp32 file", f"{measured['litert_int8_size_ratio']:.2f}×",
                     _yes(met["litert_int8_size_at_most_0.3x"])])
        rows.append([demo, "fastest runtime on this CPU (no goal)", measured["fastest"], "–"])
    return markdown(headers, rows, next(iter(result.values()))["report"]["machine"])


# every table the README and docs/ show: its name in the page, its result file, how it is printed
TABLES = {"demo": ("demo.json", classifier_table), "lm_demo": ("lm_demo.json", causal_lm_table),
          "shrink": ("shrink.json", shrink_table), "shrink_comparisons": ("shrink.json", shrink_comparisons),
          "lm_shrink": ("lm_shrink.json", lm_shrink_table), "phones": ("phones.json", phones_table),
          "images": ("images.json", images_table), "images_goals": ("images.json", images_goals),
          "lm_pte": ("lm_pte.json", lm_pte_table), "lm_gguf": ("lm_gguf.json", lm_gguf_table),
          "scale": ("scale.json", scale_table), "real_teacher": ("real_teacher.json", real_teacher_table),
          "real_teacher_goals": ("real_teacher.json", real_teacher_goals),
          "litert": ("litert.json", litert_table), "litert_goals": ("litert.json", litert_goals), "scale_top_k": ("scale_top_k.json", scale_top_k_table)}
BLOCK = re.compile(r"(<!-- table: (\w+) -->\n)(.*?)(\n<!-- /table -->)", re.S)
PAGES = ["README.md", *sorted(f"docs/{path.name}" for path in (RESULTS.parent.parent / "docs").glob("*.md"))]


def render(name: str) -> str:
    """Table `name` printed from its committed result."""
    file, table = TABLES[name]
    return table(json.loads((RESULTS / file).read_text()))


def blocks(text: str) -> list[tuple[str, str]]:
    """(name, table as written) of every generated block in a page."""
    return [(match.group(2), match.group(3)) for match in BLOCK.finditer(text)]


def rewritten(text: str) -> str:
    """The page with every generated block printed anew from the results."""
    return BLOCK.sub(lambda match: match.group(1) + render(match.group(2)) + match.group(4), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite the tables in README.md and docs/*.md")
    arguments = parser.parse_args()
    root = RESULTS.parent.parent
    if not arguments.write:
        for name, (file, _) in TABLES.items():
            if (RESULTS / file).is_file():  # a benchmark not run yet has no table
                print(f"<!-- table: {name} -->\n{render(name)}\n<!-- /table -->\n")
        return
    for page in PAGES:
        path = root / page
        text = path.read_text()
        if rewritten(text) != text:
            path.write_text(rewritten(text))
            print(f"rewrote {page}")


if __name__ == "__main__":
    main()
