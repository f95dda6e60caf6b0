"""Bench for causal LMs: quality on held-out text and speed of step-by-step decoding.

Quality: perplexity (exp of the mean next-token cross-entropy over held-out text) and
top-1 next-token agreement with the teacher. Speed: prefill tokens/s (the prompt in one
pass) and decode tokens/s (one token per step, KV cache reused) at 1 thread, measured
interleaved across models in rounds and reported as medians; peak resident memory
added by loading and running each model; size on disk.
"""

from __future__ import annotations

import gc
import json
import math
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from edgekd.errors import UserError, atomic_write_text
from edgekd.lm.data import LMExamples
from edgekd.lm.generate import OnnxDecoder
from edgekd.lm.models import load_causal_lm

REPORT_VERSION = 1


# ---------------------------------------------------------------------------- quality

def torch_logits_fn(model: torch.nn.Module) -> Callable[[list[int]], np.ndarray]:
    model.eval()

    @torch.no_grad()
    def logits(ids: list[int]) -> np.ndarray:
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()

    return logits


def onnx_logits_fn(decoder: OnnxDecoder) -> Callable[[list[int]], np.ndarray]:
    return decoder.all_logits


def quality(logits_fn: Callable[[list[int]], np.ndarray], examples: LMExamples, *,
            teacher_top1: list[np.ndarray] | None = None, vocabulary: int) -> dict:
    """Perplexity over learnt tokens and, given the teacher's top-1 per position, agreement."""
    total_loss, counted, agreed = 0.0, 0, 0
    for index, ids in enumerate(examples.input_ids):
        logits = torch.from_numpy(np.asarray(logits_fn(ids))[:-1, :vocabulary]).float()
        targets = torch.tensor(ids[1:])
        learnt = torch.tensor(examples.learnt[index][1:])
        losses = F.cross_entropy(logits, targets, reduction="none")[learnt]
        total_loss += float(losses.sum())
        counted += int(learnt.sum())
        if teacher_top1 is not None:
            agreed += int((logits.argmax(-1).numpy() == teacher_top1[index])[learnt.numpy()].sum())
    result = {"perplexity": math.exp(total_loss / max(counted, 1)), "tokens": counted}
    if teacher_top1 is not None:
        result["top1_agreement"] = agreed / max(counted, 1)
    return result


def top1_predictions(logits_fn, examples: LMExamples, *, vocabulary: int) -> list[np.ndarray]:
    return [np.asarray(logits_fn(ids))[:-1, :vocabulary].argmax(-1) for ids in examples.input_ids]


# ---------------------------------------------------------------------------- speed and memory

@dataclass
class Speed:
    prefill_tokens_per_second: float
    decode_tokens_per_second: float


@torch.no_grad()
def torch_decode(model: torch.nn.Module, prompt_ids: list[int], new_tokens: int) -> Speed:
    """A plain greedy loop with the model's KV cache (no generate() overhead)."""
    ids = torch.tensor([prompt_ids])
    started = time.perf_counter()
    output = model(input_ids=ids, use_cache=True)
    token = output.logits[:, -1:].argmax(-1)
    prefill = time.perf_counter() - started
    past, started = output.past_key_values, time.perf_counter()
    for _ in range(new_tokens - 1):
        output = model(input_ids=token, past_key_values=past, use_cache=True)
        past, token = output.past_key_values, output.logits[:, -1:].argmax(-1)
    decode = time.perf_counter() - started
    return Speed(len(prompt_ids) / prefill, (new_tokens - 1) / decode)


def onnx_decode(decoder: OnnxDecoder, prompt_ids: list[int], new_tokens: int) -> Speed:
    produced, prefill, decode = decoder.generate_ids(prompt_ids, new_tokens=new_tokens, stop_at_eos=False)
    return Speed(len(prompt_ids) / prefill, (len(produced) - 1) / decode)


def resident_megabytes(field: str = "VmRSS") -> float:
    """This process's resident memory (VmRSS) or its peak since the last reset (VmHWM)."""
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) / 1024 if match else float("nan")


def reset_peak_memory() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM, so each model's peak is its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def interleaved_speeds(runners: dict[str, Callable[[], Speed]], *, rounds: int) -> dict[str, dict]:
    """Each runner once per round, in turn, so machine noise hits all alike; medians."""
    samples = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            samples[name].append(run())
    return {name: {"prefill_tokens_per_second": statistics.median(s.prefill_tokens_per_second for s in runs),
                   "decode_tokens_per_second": statistics.median(s.decode_tokens_per_second for s in runs),
                   "decode_samples": [round(s.decode_tokens_per_second, 2) for s in runs]}
            for name, runs in samples.items()}


def folder_megabytes(folder: Path, pattern: str) -> float:
    if Path(folder).is_file():  # a .gguf teacher
        return Path(folder).stat().st_size / 2**20
    return sum(p.stat().st_size for p in Path(folder).glob(pattern)) / 2**20


# ---------------------------------------------------------------------------- the stage

def bench_lm(*, teacher_dir: Path, student_dir: Path | None, artifacts: Path | None,
             texts: list[str], out: Path | None = None, max_length: int = 128,
             prompt_tokens: int = 64, new_tokens: int = 64, rounds: int = 3) -> dict:
    """Quality and speed of teacher (PyTorch), student (PyTorch) and each exported target."""
    if student_dir is None and artifacts is None:
        raise UserError("nothing to compare with the teacher; pass --student and/or --artifacts")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # every speed is at 1 thread; restored on the way out
    try:
        return _bench(teacher_dir=teacher_dir, student_dir=student_dir, artifacts=artifacts, texts=texts,
                      out=out, max_length=max_length, prompt_tokens=prompt_tokens,
                      new_tokens=new_tokens, rounds=rounds)
    finally:
        torch.set_num_threads(threads)


def _bench(*, teacher_dir, student_dir, artifacts, texts, out, max_length, prompt_tokens,
           new_tokens, rounds) -> dict:
    from edgekd.lm.data import encode_texts

    candidates = {"teacher": ("pytorch-fp32", lambda: load_causal_lm(teacher_dir)[0],
                              folder_megabytes(teacher_dir, "*.safetensors"))}
    if student_dir is not None:
        candidates["student"] = ("pytorch-fp32", lambda: load_causal_lm(student_dir, role="student")[0],
                                 folder_megabytes(student_dir, "*.safetensors"))
    for folder in _artifact_folders(artifacts):
        precision = json.loads((folder / "edgekd.json").read_text())["precision"]
        candidates[f"student-{folder.name}"] = (f"onnxruntime-{precision}",
                                                lambda f=folder: OnnxDecoder(f, threads=1),
                                                folder_megabytes(folder, "model.*"))
    teacher_tokenizer = _checked_tokenizer(teacher_dir, student_dir)
    examples = encode_texts(texts, teacher_tokenizer, max_length=max_length)
    rows, loaded, teacher_top1, vocabulary = {}, {}, None, None
    for name, (runtime, load, size) in candidates.items():
        # peak memory: what loading the model and scoring the held-out text added
        gc.collect()
        reset_peak_memory()
        before = resident_megabytes()
        model = load()
        if vocabulary is None:
            vocabulary = model.get_output_embeddings().out_features
        logits_fn = onnx_logits_fn(model) if isinstance(model, OnnxDecoder) else torch_logits_fn(model)
        if teacher_top1 is None:
            teacher_top1 = top1_predictions(logits_fn, examples, vocabulary=vocabulary)
        rows[name] = {"runtime": runtime, "size_mb": round(size, 2),
                      **quality(logits_fn, examples, vocabulary=vocabulary,
                                teacher_top1=None if name == "teacher" else teacher_top1)}
        rows[name]["peak_memory_mb"] = round(resident_megabytes("VmHWM") - before, 1)
        loaded[name] = model
    prompt = _prompt(examples, prompt_tokens)
    runners = {name: (lambda m=model: onnx_decode(m, prompt, new_tokens)) if isinstance(model, OnnxDecoder)
               else (lambda m=model: torch_decode(m, prompt, new_tokens)) for name, model in loaded.items()}
    for name, speed in interleaved_speeds(runners, rounds=rounds).items():
        rows[name].update(speed)
    for row in rows.values():
        row["decode_speedup_vs_teacher"] = row["decode_tokens_per_second"] / rows["teacher"]["decode_tokens_per_second"]
        row["perplexity_ratio_vs_teacher"] = row["perplexity"] / rows["teacher"]["perplexity"]
    report = {"version": REPORT_VERSION, "task": "causal-lm", "threads": 1,
              "held_out_texts": len(examples), "prompt_tokens": len(prompt), "new_tokens": new_tokens,
              "rounds": rounds, "models": rows}
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out) / "report.json", json.dumps(report, indent=2))
    return report


def _artifact_folders(artifacts: Path | None) -> list[Path]:
    if artifacts is None:
        return []
    folders = [f for f in sorted(Path(artifacts).iterdir()) if (f / "edgekd.json").is_file()] \
        if Path(artifacts).is_dir() else []
    if not folders:
        raise UserError(f"{artifacts} holds no exported causal LM (no */edgekd.json); run edgekd lm-export")
    return folders


def _checked_tokenizer(teacher_dir: Path, student_dir: Path | None):
    """The teacher's tokenizer, after checking the student uses the same one."""
    from transformers import AutoTokenizer

    from edgekd.lm.models import load_causal_lm

    teacher_tokenizer = load_causal_lm(teacher_dir)[1] if str(teacher_dir).endswith(".gguf") \
        else AutoTokenizer.from_pretrained(str(teacher_dir))
    if student_dir is not None:
        student_vocab = AutoTokenizer.from_pretrained(str(student_dir)).get_vocab()
        if student_vocab != teacher_tokenizer.get_vocab():
            raise UserError("teacher and student tokenizers differ; bench the student against "
                            "the teacher it was distilled from")
    return teacher_tokenizer


def _prompt(examples: LMExamples, length: int) -> list[int]:
    longest = max(examples.input_ids, key=len)
    return longest[:length]


def format_table(report: dict) -> str:
    header = (f"{'model':<18}{'runtime':<22}{'ppl':>9}{'ppl x':>7}{'top1':>7}"
              f"{'prefill t/s':>13}{'decode t/s':>12}{'x teacher':>10}{'MB':>9}{'peak MB':>9}")
    lines = [header, "-" * len(header)]
    for name, row in report["models"].items():
        agreement = f"{row['top1_agreement']:.3f}" if "top1_agreement" in row else "-"
        lines.append(f"{name:<18}{row['runtime']:<22}{row['perplexity']:>9.2f}"
                     f"{row['perplexity_ratio_vs_teacher']:>7.2f}{agreement:>7}"
                     f"{row['prefill_tokens_per_second']:>13.1f}{row['decode_tokens_per_second']:>12.1f}"
                     f"{row['decode_speedup_vs_teacher']:>10.2f}{row['size_mb']:>9.1f}{row['peak_memory_mb']:>9.0f}")
    return "\n".join(lines)
