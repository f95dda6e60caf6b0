"""Bench for causal LMs: quality on held-out text and speed of step-by-step decoding.

Quality: perplexity (exp of the mean next-token cross-entropy over held-out text) and
top-1 next-token agreement with the teacher. Speed: prefill tokens/s (the prompt in one
pass) and decode tokens/s (one token per step, KV cache reused) at 1 thread, measured
interleaved across models in rounds and reported as medians; peak resident memory of a
process of its own that loads and runs each model (as for every task); size on disk.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from edgekd.benchmarking.latency import interleaved
from edgekd.benchmarking.memory import MemoryProbe, meanwhile
from edgekd.benchmarking.runtimes import Candidate
from edgekd.benchmarking.report import add_same_target_speedups, skipped_warnings
from edgekd.errors import UserError
from edgekd.lm.data import LMExamples
from edgekd.lm.generate import Decoder, decoder_for
from edgekd.lm.models import load_causal_lm
from edgekd.tasks import is_decoder

# ---------------------------------------------------------------------------- quality

def torch_logits_fn(model: torch.nn.Module) -> Callable[[list[int]], np.ndarray]:
    model.eval()

    @torch.no_grad()
    def logits(ids: list[int]) -> np.ndarray:
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()

    return logits


def onnx_logits_fn(decoder: Decoder) -> Callable[[list[int]], np.ndarray]:
    return decoder.all_logits


def quality(logits_fn: Callable[[list[int]], np.ndarray], examples: LMExamples, *,
            teacher_top1: list[np.ndarray] | None = None, vocabulary: int,
            own: OwnVocabulary | None = None) -> dict:
    """Perplexity over learnt tokens and, given the teacher's top-1 per position, agreement.

    A model with a trimmed vocabulary (`own`) reads its own tokens of the same texts: its
    perplexity is its summed loss over the teacher's count of tokens, so the rows compare the
    same text; agreement is counted on the texts it tokenizes exactly as the teacher."""
    total_loss, counted, agreed, compared = 0.0, 0, 0, 0
    for index, ids in enumerate(own.examples.input_ids if own else examples.input_ids):
        learnt_flags = own.examples.learnt[index] if own else examples.learnt[index]
        if len(ids) < 2:
            continue  # nothing to predict
        logits = torch.from_numpy(np.asarray(logits_fn(ids))[:-1, :vocabulary]).float()
        targets = torch.tensor(ids[1:], dtype=torch.long)
        learnt = torch.tensor(learnt_flags[1:], dtype=torch.bool)
        losses = F.cross_entropy(logits, targets, reduction="none")[learnt]
        total_loss += float(losses.sum())
        counted += int(learnt.sum())
        if teacher_top1 is None:
            continue
        predicted = logits.argmax(-1).numpy()
        if own is not None:
            if [own.kept[i] for i in ids] != examples.input_ids[index]:
                continue  # tokenized otherwise: its positions are not the teacher's
            predicted = np.asarray(own.kept)[predicted]
        agreed += int((predicted == teacher_top1[index])[learnt.numpy()].sum())
        compared += int(learnt.sum())
    if own is not None:
        counted = examples.predicted_tokens  # the teacher's tokens of the same texts
    result = {"perplexity": math.exp(total_loss / max(counted, 1)), "tokens": counted}
    if teacher_top1 is not None:
        result["top1_agreement"] = agreed / max(compared, 1)
    return result


@dataclass(frozen=True)
class OwnVocabulary:
    """A model whose vocabulary was trimmed (edgekd/vocab.py): its tokenizer, its ids' teacher
    ids and the bench texts in its own tokens."""

    tokenizer: object
    kept: list[int]  # own id -> the teacher's id of the same piece
    examples: LMExamples
    coverage: dict


def own_vocabulary(folder: Path, teacher_tokenizer, examples: LMExamples) -> OwnVocabulary | None:
    """None when the model in `folder` uses the teacher's tokenizer; its trimmed vocabulary when
    every piece of its tokenizer is the teacher's; else a clear refusal."""
    from transformers import AutoTokenizer

    from edgekd.vocab import coverage_record

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    vocabulary, teacher_vocabulary = tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if vocabulary == teacher_vocabulary:
        return None
    if len(vocabulary) >= len(teacher_vocabulary) or not set(vocabulary) <= set(teacher_vocabulary):
        raise UserError(f"the tokenizer in {folder} is not the teacher's (nor a trimmed copy of it); bench the "
                        "student against the teacher it was distilled from")
    kept = [teacher_vocabulary[piece] for piece, _ in sorted(vocabulary.items(), key=lambda item: item[1])]
    texts = [teacher_tokenizer.decode(ids) for ids in examples.input_ids]  # the very text the teacher scores
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    own = LMExamples(input_ids=ids, learnt=[[True] * len(row) for row in ids], pad_token_id=examples.pad_token_id)
    return OwnVocabulary(tokenizer=tokenizer, kept=kept, examples=own,
                         coverage=coverage_record(teacher_tokenizer, tokenizer, texts))


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


def onnx_decode(decoder: Decoder, prompt_ids: list[int], new_tokens: int) -> Speed:
    produced, prefill, decode = decoder.generate_ids(prompt_ids, new_tokens=new_tokens, stop_at_eos=False)
    return Speed(len(prompt_ids) / prefill, (len(produced) - 1) / decode)


def interleaved_speeds(runners: dict[str, Callable[[], Speed]], *, rounds: int) -> dict[str, dict]:
    """Each runner once per round, in turn (edgekd/benchmarking/latency.py), so machine noise
    hits all alike; medians."""
    samples = interleaved(runners, rounds=rounds)
    return {name: {"prefill_tokens_per_second": statistics.median(s.prefill_tokens_per_second for s in runs),
                   "decode_tokens_per_second": statistics.median(s.decode_tokens_per_second for s in runs),
                   "decode_samples": [round(s.decode_tokens_per_second, 2) for s in runs]}
            for name, runs in samples.items()}


def folder_bytes(folder: Path, pattern: str) -> int:
    """Bytes of the files matching `pattern` in `folder` (of the file, for a .gguf teacher)."""
    if Path(folder).is_file():
        return Path(folder).stat().st_size
    return sum(p.stat().st_size for p in Path(folder).glob(pattern))


# ---------------------------------------------------------------------------- the stage

LM_INPUTS = ["input_ids", "attention_mask"]  # what the memory probe feeds a causal LM


def bench_lm(*, teacher_dir: Path, student_dir: Path | None, artifacts: Path | list[Path] | None,
             texts: list[str], max_length: int = 128, prompt_tokens: int = 64, new_tokens: int = 64,
             rounds: int = 3, gates=None) -> dict:
    """Quality and speed of teacher (PyTorch), student (PyTorch) and each exported target;
    the report has the schema of every task's (docs/report-schema.md), gates included
    (`gates`: edgekd.benchmarking.gates.GateLimits; the caller decides whether a failure stops it)."""
    from edgekd.benchmarking.gates import GateLimits, check_gates
    from edgekd.benchmarking.machine import machine_info, measurement_warnings
    from edgekd.benchmarking.report import SCHEMA_VERSION
    from edgekd.lm.data import encode_texts

    if student_dir is None and artifacts is None:
        raise UserError("nothing to compare with the teacher; pass --student and/or --artifacts")
    if new_tokens < 2 or rounds < 1:
        raise UserError(f"--new-tokens must be at least 2 (got {new_tokens}) and --rounds at least 1 (got {rounds})")
    models, skipped = _models(teacher_dir, student_dir, artifacts)
    if len(models) == 1:
        raise UserError(f"nothing to compare with the teacher: {skipped[0]['reason']}" if skipped else
                        "nothing to compare with the teacher; pass --student and/or --artifacts")
    teacher_tokenizer = _teacher_tokenizer(teacher_dir)
    examples = encode_texts(texts, teacher_tokenizer, max_length=max_length)
    owns = {model.name: own_vocabulary(model.config_folder, teacher_tokenizer, examples)
            for model in models if model.name != "teacher"}
    machine = machine_info()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # every speed is at 1 thread; restored on the way out
    try:
        rows, prompt = _measure(models, examples, owns, teacher_tokenizer, prompt_tokens=prompt_tokens,
                                new_tokens=new_tokens, rounds=rounds)
    finally:
        torch.set_num_threads(threads)
    report = {"schema_version": SCHEMA_VERSION, "task": "causal-lm", "rows": rows, "machine": machine,
              "data": {"rows": len(examples), "tokens": examples.predicted_tokens},
              "settings": {"max_length": max_length, "prompt_tokens": len(prompt), "new_tokens": new_tokens,
                           "rounds": rounds, "threads": 1, "batch_size": 1, "interleaved": True},
              "skipped": skipped, "warnings": skipped_warnings(skipped) + measurement_warnings(rows, machine)}
    report["gates"] = check_gates(rows, gates or GateLimits())
    return report


def _models(teacher_dir: Path, student_dir: Path | None, artifacts) -> tuple[list[Candidate], list[dict]]:
    """Teacher, student and each artifact, loaded (the artifacts' manifests checked first); each
    candidate's config folder is where its tokenizer is (a trimmed vocabulary's is not the teacher's).
    Also the artifacts skipped, with why (a .gguf file is measured with llama.cpp's own tools)."""
    from edgekd.lm.models import dequantised_gguf
    from edgekd.manifest import origin_of, read_manifest

    teacher_folder = dequantised_gguf(Path(teacher_dir)) if str(teacher_dir).lower().endswith(".gguf") else teacher_dir
    exported, skipped = [], []
    for folder in _artifact_folders(artifacts):
        manifest = read_manifest(folder)
        if not is_decoder(manifest["task"]):
            raise UserError(f"{folder} holds a {manifest['task']} artifact, not a causal LM; bench it "
                            "with its own teacher")
        if manifest["format"] == "gguf":
            skipped.append({"artifact": str(folder), "reason": "a .gguf file runs in llama.cpp, which edgekd bench "
                            "does not drive yet: measure it with llama-perplexity and llama-bench"})
            continue
        exported.append((folder, manifest, origin_of(manifest, teacher_folder)))  # a .gguf teacher: its folder
    common = dict(input_names=LM_INPUTS, threads=1)
    models = [Candidate("teacher", "pytorch fp32", "pytorch", Path(teacher_dir), load_causal_lm(teacher_dir)[0],
                        origin="teacher", config_folder=Path(teacher_folder), **common)]
    if student_dir is not None:
        models.append(Candidate("student", "pytorch fp32", "pytorch", Path(student_dir),
                                load_causal_lm(student_dir, role="student")[0], config_folder=Path(student_dir),
                                **common))
    for folder, manifest, origin in exported:
        runtime = {"ort": "ort-mobile", "pte": "executorch"}.get(manifest["format"], "ort")
        models.append(Candidate(f"{origin}/{manifest['target']}", f"{runtime} {manifest['precision']}",
                                manifest["format"], folder / manifest["model_file"], decoder_for(folder, threads=1),
                                precision=manifest["precision"], target=manifest["target"], config_folder=folder,
                                origin=origin, **common))
    return models, skipped


def _reference(model: Candidate, *, has_student: bool) -> str | None:
    """The row a model's quality ratio is against: what it was made from."""
    if model.name == "teacher":
        return None
    return "student" if model.origin == "student" and model.name != "student" and has_student else "teacher"


def _size_bytes(model: Candidate) -> int:
    if model.format == "pytorch":
        return folder_bytes(model.source, "*.safetensors")
    return folder_bytes(model.config_folder, "model.*")


def _measure(models: list[Candidate], examples: LMExamples, owns: dict, teacher_tokenizer, *, prompt_tokens: int,
             new_tokens: int, rounds: int) -> tuple[list[dict], list[int]]:
    """Every model's quality and, meanwhile, its peak memory in a process of its own (as for
    every task: edgekd/benchmarking/memory.py, on the decode prompt); then decode speed, all models
    interleaved. A trimmed model reads the same prompt in its own tokens."""
    prompt = _prompt(examples, prompt_tokens)
    prompt_text = teacher_tokenizer.decode(prompt)
    prompts = {model.name: owns[model.name].tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
               if owns.get(model.name) else prompt for model in models}
    probes = {}
    for model in models:
        if model.format == "pte":
            continue  # the memory child feeds whole prompts; a .pte causal LM takes one token per call
        ids = prompts[model.name]
        feeds = {"input_ids": np.asarray([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
        memory_source = model.config_folder if model.format == "pytorch" else model.source  # a .gguf: its folder
        probes[model.name] = MemoryProbe(model_format=model.format, source=memory_source,
                                         input_names=list(feeds), feeds=feeds, threads=1)
    (rows, loaded), memory = meanwhile(probes, lambda: _quality_rows(models, examples, owns))
    for row in rows:
        row["memory"] = memory.get(row["name"])
    runners = {name: (lambda m=instance, p=prompts[name]: onnx_decode(m, p, new_tokens))
               if isinstance(instance, Decoder)
               else (lambda m=instance, p=prompts[name]: torch_decode(m, p, new_tokens)) for name, instance in loaded.items()}
    speeds = interleaved_speeds(runners, rounds=rounds)
    perplexity = {row["name"]: row["quality"]["perplexity"] for row in rows}
    for row in rows:
        speed = speeds[row["name"]]
        row["latency"] = {"p50_ms": 1000 / speed["decode_tokens_per_second"], **speed}  # decode, per token
        row["speedup"] = speed["decode_tokens_per_second"] / speeds["teacher"]["decode_tokens_per_second"]
        row["perplexity_ratio"] = perplexity[row["name"]] / perplexity[row["reference"] or "teacher"]
        row["perplexity_ratio_vs_teacher"] = perplexity[row["name"]] / perplexity["teacher"]
    add_same_target_speedups(rows)
    return rows, prompt


def _quality_rows(models: list[Candidate], examples: LMExamples, owns: dict) -> tuple[list[dict], dict]:
    """Perplexity and agreement with the teacher of each model; the loaded models."""
    rows, teacher_top1, vocabulary = [], None, None
    has_student = any(model.name == "student" for model in models)
    for model in models:
        own = owns.get(model.name)
        if vocabulary is None:
            vocabulary = model.model.get_output_embeddings().out_features
        logits_fn = onnx_logits_fn(model.model) if isinstance(model.model, Decoder) else torch_logits_fn(model.model)
        if teacher_top1 is None:
            teacher_top1 = top1_predictions(logits_fn, examples, vocabulary=vocabulary)
        row_quality = quality(logits_fn, examples, vocabulary=len(own.kept) if own else vocabulary, own=own,
                              teacher_top1=None if model.name == "teacher" else teacher_top1)
        rows.append({"name": model.name, "runtime": model.runtime, "format": model.format,
                     "precision": model.precision, "target": model.target, "source": str(model.source),
                     "threads": 1, "quality": row_quality, "reference": _reference(model, has_student=has_student),
                     "size_bytes": _size_bytes(model), "vocabulary": own.coverage if own else None})
    return rows, {model.name: model.model for model in models}


def _artifact_folders(artifacts) -> list[Path]:
    from edgekd.manifest import artifact_folders

    given = [] if artifacts is None else [artifacts] if isinstance(artifacts, (str, Path)) else list(artifacts)
    return [folder for root in given for folder in artifact_folders(root)]


def _teacher_tokenizer(teacher_dir: Path):
    from transformers import AutoTokenizer

    from edgekd.lm.models import load_causal_lm

    return load_causal_lm(teacher_dir)[1] if str(teacher_dir).endswith(".gguf") \
        else AutoTokenizer.from_pretrained(str(teacher_dir))


def _prompt(examples: LMExamples, length: int) -> list[int]:
    longest = max(examples.input_ids, key=len)
    return longest[:length]
