"""The decoder contract's bench measurement (edgekd/benchmarking/stage.py runs it, as it runs
the classifiers'): quality on held-out text and speed of step-by-step decoding.

Quality: perplexity (exp of the mean next-token cross-entropy over held-out text) and
top-1 next-token agreement with the teacher. Speed: prefill tokens/s (the prompt in one
pass) and decode tokens/s (one token per step, KV cache reused) at 1 thread, measured
interleaved across models in rounds and reported as medians. Memory, size and the report
are the stage's, as for every task.
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
from edgekd.benchmarking.runtimes import Candidate
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


# ---------------------------------------------------------------------------- the measurement

LM_INPUTS = ["input_ids", "attention_mask"]  # what the memory probe feeds a causal LM


def bench_lm(*, teacher_dir: Path, student_dir: Path | None, artifacts: Path | list[Path] | None,
             texts: list[str], max_length: int = 128, prompt_tokens: int = 64, new_tokens: int = 64,
             rounds: int = 3, gates=None) -> dict:
    """Quality and speed of teacher (PyTorch), student (PyTorch) and each exported target;
    the report has the schema of every task's (docs/report-schema.md), gates included
    (`gates`: edgekd.benchmarking.gates.GateLimits; the caller decides whether a failure stops it)."""
    from edgekd.benchmarking.gates import GateLimits
    from edgekd.benchmarking.stage import run

    if student_dir is None and artifacts is None:
        raise UserError("nothing to compare with the teacher; pass --student and/or --artifacts")
    if new_tokens < 2 or rounds < 1:
        raise UserError(f"--new-tokens must be at least 2 (got {new_tokens}) and --rounds at least 1 (got {rounds})")
    measurement = DecoderMeasurement(teacher_dir, student_dir, artifacts, texts=texts, max_length=max_length,
                                     prompt_tokens=prompt_tokens, new_tokens=new_tokens, rounds=rounds)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # every speed is at 1 thread; restored on the way out
    try:
        return run(measurement, gates=gates or GateLimits())
    finally:
        torch.set_num_threads(threads)


class DecoderMeasurement:
    """The decoder contract's measurement (edgekd/benchmarking/stage.py runs it): perplexity and
    next-token agreement over held-out text; prefill and decode speed, one token per step with
    the key/value cache, at 1 thread. A trimmed model reads the same texts in its own tokens."""

    task = "causal-lm"

    def __init__(self, teacher_dir: Path, student_dir: Path | None, artifacts, *, texts: list[str],
                 max_length: int, prompt_tokens: int, new_tokens: int, rounds: int):
        from edgekd.lm.data import encode_texts

        self.teacher_dir, self.student_dir, self.artifacts = teacher_dir, student_dir, artifacts
        self.max_length, self.new_tokens, self.rounds = max_length, new_tokens, rounds
        self.tokenizer = _teacher_tokenizer(teacher_dir)
        self.examples = encode_texts(texts, self.tokenizer, max_length=max_length)
        self.prompt = _prompt(self.examples, prompt_tokens)
        self.owns: dict[str, OwnVocabulary | None] = {}
        self.prompts: dict[str, list[int]] = {}

    def candidates(self) -> tuple[list[Candidate], list[dict]]:
        models, skipped = _models(self.teacher_dir, self.student_dir, self.artifacts)
        if len(models) == 1:
            raise UserError(f"nothing to compare with the teacher: {skipped[0]['reason']}" if skipped else
                            "nothing to compare with the teacher; pass --student and/or --artifacts")
        self.owns = {model.name: own_vocabulary(model.config_folder, self.tokenizer, self.examples)
                     for model in models if model.name != "teacher"}
        prompt_text = self.tokenizer.decode(self.prompt)
        self.prompts = {model.name: self.owns[model.name].tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
                        if self.owns.get(model.name) else self.prompt for model in models}
        return models, skipped

    def memory_feeds(self, candidates: list[Candidate]) -> dict[str, dict]:
        # the memory child feeds whole prompts; a .pte causal LM takes one token per call
        return {model.name: {"input_ids": np.asarray([self.prompts[model.name]], dtype=np.int64),
                             "attention_mask": np.ones((1, len(self.prompts[model.name])), dtype=np.int64)}
                for model in candidates if model.format != "pte"}

    def quality(self, candidates: list[Candidate]) -> dict[str, dict]:
        """Perplexity and agreement with the teacher's top-1 next token of each model."""
        qualities, teacher_top1 = {}, None
        vocabulary = candidates[0].model.get_output_embeddings().out_features  # the teacher's
        for model in candidates:
            own = self.owns.get(model.name)
            logits_fn = _logits_fn(model.model)
            if teacher_top1 is None:
                teacher_top1 = top1_predictions(logits_fn, self.examples, vocabulary=vocabulary)
            row_quality = quality(logits_fn, self.examples, vocabulary=len(own.kept) if own else vocabulary, own=own,
                                  teacher_top1=None if model.name == "teacher" else teacher_top1)
            qualities[model.name] = {"quality": row_quality, "vocabulary": own.coverage if own else None}
        return qualities

    def speed(self, candidates: list[Candidate]) -> dict[str, dict]:
        """Decode speed of every model, interleaved; `latency.p50_ms` is per decoded token."""
        runners = {model.name: (lambda m=model.model, p=self.prompts[model.name]: decode_speed(m, p, self.new_tokens))
                   for model in candidates}
        speeds = interleaved_speeds(runners, rounds=self.rounds)
        return {name: {"latency": {"p50_ms": 1000 / speed["decode_tokens_per_second"], **speed}}
                for name, speed in speeds.items()}

    def compare(self, rows: list[dict]) -> None:
        perplexity = {row["name"]: row["quality"]["perplexity"] for row in rows}
        for row in rows:
            row["perplexity_ratio"] = perplexity[row["name"]] / perplexity[row["reference"] or "teacher"]
            row["perplexity_ratio_vs_teacher"] = perplexity[row["name"]] / perplexity["teacher"]

    def record(self, candidates: list[Candidate]) -> dict:
        return {"data": {"rows": len(self.examples), "tokens": self.examples.predicted_tokens},
                "settings": {"max_length": self.max_length, "prompt_tokens": len(self.prompt),
                             "new_tokens": self.new_tokens, "rounds": self.rounds, "threads": 1, "batch_size": 1,
                             "interleaved": True}}

    def warnings(self, report: dict) -> list[str]:
        return []


def _models(teacher_dir: Path, student_dir: Path | None, artifacts) -> tuple[list[Candidate], list[dict]]:
    """Teacher, student and each artifact, loaded (the artifacts' manifests checked first); each
    candidate's config folder is where its tokenizer is (a trimmed vocabulary's is not the teacher's).
    Also the artifacts skipped, with why (a .gguf file where llama.cpp is not installed)."""
    from edgekd.lm.gguf import llama_cpp_installed
    from edgekd.lm.models import dequantised_gguf
    from edgekd.manifest import artifact_folders, origin_of, read_manifest

    teacher_folder = dequantised_gguf(Path(teacher_dir)) if str(teacher_dir).lower().endswith(".gguf") else teacher_dir
    given = [] if artifacts is None else [artifacts] if isinstance(artifacts, (str, Path)) else list(artifacts)
    exported, skipped = [], []
    for folder in [folder for root in given for folder in artifact_folders(root)]:
        manifest = read_manifest(folder)
        if not is_decoder(manifest["task"]):
            raise UserError(f"{folder} holds a {manifest['task']} artifact, not a causal LM; bench it "
                            "with its own teacher")
        if manifest["format"] == "gguf" and not llama_cpp_installed():
            skipped.append({"artifact": str(folder), "reason": "a .gguf file runs in llama.cpp, which is not "
                            "installed here: pip install 'edgekd[llama]', or measure it with llama-perplexity "
                            "and llama-bench"})
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
        runtime = {"ort": "ort-mobile", "pte": "executorch", "gguf": "llama.cpp"}.get(manifest["format"], "ort")
        models.append(Candidate(f"{origin}/{manifest['target']}", f"{runtime} {manifest['precision']}",
                                manifest["format"], folder / manifest["model_file"], decoder_for(folder, threads=1),
                                precision=manifest["precision"], target=manifest["target"], config_folder=folder,
                                origin=origin, **common))
    return models, skipped


def _logits_fn(model) -> Callable[[list[int]], np.ndarray]:
    return model.all_logits if isinstance(model, Decoder) else torch_logits_fn(model)


def decode_speed(model, prompt_ids: list[int], new_tokens: int) -> Speed:
    return (onnx_decode if isinstance(model, Decoder) else torch_decode)(model, prompt_ids, new_tokens)


def _teacher_tokenizer(teacher_dir: Path):
    from transformers import AutoTokenizer

    return load_causal_lm(teacher_dir)[1] if str(teacher_dir).endswith(".gguf") \
        else AutoTokenizer.from_pretrained(str(teacher_dir))


def _prompt(examples: LMExamples, length: int) -> list[int]:
    longest = max(examples.input_ids, key=len)
    return longest[:length]
