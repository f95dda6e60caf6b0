"""Causal LMs' pipeline: texts (and prompts) read and tokenised, the student cut from the
teacher (the contiguous block that changes the hidden state least, a sliced shape or a
latency budget), the top-k distillation stage (edgekd/lm/train.py), the key/value-cache
export (edgekd/lm/export.py) and the perplexity and decode-speed bench (edgekd/lm/bench.py).

Each function takes the options as `edgekd.distill/export/bench` hold them (`options`: every
option by name, defaults filled in; `given`: the names given) and returns their result."""

from __future__ import annotations

from pathlib import Path

from edgekd.tasks import CAUSAL_LM
from edgekd.tasks.shared import Log, check_writable, judge_student, sized_student_config, vocabulary_trim

NAME = CAUSAL_LM.name


def distill(options: dict, *, given: set[str], log: Log):
    """An LMDistillConfig from the options given (the rest keep its defaults), the student made
    from the teacher, the causal-LM stage."""
    from edgekd.config import LMDistillConfig, cache_dir, config_from
    from edgekd.lm.data import encode_texts, read_texts
    from edgekd.lm.models import load_causal_lm, make_lm_student, probe_batch, shared_vocabulary
    from edgekd.lm.train import distill_lm, poor_student
    from edgekd.results import Student
    from edgekd.vocab import describe

    config = config_from(LMDistillConfig, options, given)
    out = Path(options["out"])
    check_writable(out, overwrite=options["overwrite"] or options["resume"])
    texts, prompts = read_texts(options["data"], text_column=options["text_column"],
                                prompt_column=options["prompt_column"], split=options["split"], default_split="train")
    teacher_model, tokenizer = (options["teacher"] if isinstance(options["teacher"], tuple)
                                else load_causal_lm(options["teacher"]))
    cache_root = Path(options["cache_dir"]) if options["cache_dir"] else None
    # tokenised once into the cache, memory-mapped: memory does not grow with the token count
    examples = encode_texts(texts, tokenizer, max_length=config.max_length, prompts=prompts, pack=config.pack,
                            store=(cache_root or cache_dir()) / "tokens")
    shape = options["student_config"]
    if options["latency_budget_ms"] is not None:
        shape = sized_student_config(
            teacher_model, tokenizer, task=NAME, budget_ms=options["latency_budget_ms"],
            target=options["budget_target"], sequence_length=options["sequence_length"],
            given=(options["student_layers"], shape, options["student"]), log=log)
    student_model, student_tokenizer = make_lm_student(
        teacher_model, tokenizer, layers=options["student_layers"], config_spec=shape,
        model=options["student"], seed=config.seed, init=options["student_init"],
        probe=probe_batch(examples))  # the probe picks the layers a count drops
    vocabulary = shared_vocabulary(teacher_model, tokenizer, student_model, student_tokenizer)
    trim = vocabulary_trim(options["trim_vocab"], options["trim_vocab_min_count"],
                           texts=list(texts) + list(prompts or []), held_out=None, tokenizer=student_tokenizer,
                           model_config=student_model.config)
    result = distill_lm(teacher=teacher_model, student=student_model, tokenizer=student_tokenizer,
                        train=examples, config=config, out=out, vocabulary=vocabulary, trim=trim,
                        overwrite=options["overwrite"], show_progress=not options["quiet"],
                        resume=options["resume"], cache_root=cache_root)
    if result.student_dir is None:  # rank 0 alone reports under torchrun
        return None
    if result.vocabulary:
        log(f"student: {describe(result.vocabulary)} (edgekd bench reports held-out coverage)")
    line = (f"student written to {result.student_dir} ({result.steps} steps, final loss "
            f"{result.final_loss:.4f}, {result.tokens_per_second:.1f} tokens/s, {result.seconds:.0f}s; "
            f"teacher cache {result.teacher_seconds:.0f}s"
            f"{f', {result.cache_bytes_per_token:.0f} B/token' if result.cache_bytes_per_token else ''})")
    poor = poor_student(student_model, teacher_model, examples, vocabulary=vocabulary)
    student = Student(path=result.student_dir, task=NAME, steps=result.steps, seconds=result.seconds, summary=line,
                      final_loss=result.final_loss, vocabulary=result.vocabulary or None, poor=poor)
    return judge_student(student, allow_poor_student=options["allow_poor_student"], log=log)


def export(student: Path, *, targets, out: Path, options: dict, log: Log):
    """The key/value-cache export, its quantised targets held to a perplexity budget on --data."""
    from edgekd.lm.data import read_texts
    from edgekd.lm.export import export_lm

    data = options["data"]
    texts = (read_texts(data, text_column=options["text_column"], split=options["split"],
                        default_split="validation")[0] if data is not None else None)
    return export_lm(student, targets=targets, out=out, overwrite=options["overwrite"],
                     max_length=options["max_length"], gate_texts=texts,
                     gate_source=(str(data) if isinstance(data, (str, Path)) else "held-out text") if data is not None
                     else "", max_perplexity_ratio=options["max_perplexity_ratio"],
                     with_tokenizer=options["with_tokenizer"], show_progress=not options["quiet"])


def show_export(artifacts, *, out: Path, checked: bool, log: Log) -> None:
    """One line per artifact: its file, size, greedy agreement and perplexity gate."""
    for artifact in artifacts:
        gate = f"  perplexity {artifact.perplexity_ratio:.3f}x fp32" if artifact.perplexity_ratio else ""
        kept = f" ({artifact.kept_float} MatMuls kept float)" if artifact.kept_float else ""
        log(f"{artifact.target:<12} {artifact.model_file}  "
            f"{artifact.size_bytes / 2**20:.1f} MB  greedy tokens equal to PyTorch: "
            f"{artifact.greedy_agreement:.0%}{gate}{kept}")


def bench(options: dict, *, artifacts, gates) -> dict:
    """Perplexity, next-token agreement and decode speed of the teacher, the student and its exports."""
    from edgekd.lm.bench import bench_lm
    from edgekd.lm.data import read_texts

    texts, _ = read_texts(options["data"], text_column=options["text_column"], split=options["split"],
                          default_split="test")
    return bench_lm(teacher_dir=Path(options["teacher"]), student_dir=options["student"], artifacts=artifacts,
                    texts=texts, max_length=options["max_length"], new_tokens=options["new_tokens"],
                    rounds=options["rounds"], gates=gates)


def demo(options: dict, *, log: Log) -> None:
    """SmolLM2-135M distilled on BBC News text -> fp32, int8 and int4 with a key/value cache -> report."""
    import json
    from dataclasses import replace

    from edgekd.demo import run
    from edgekd.lm.demo import LMDemo, LMDemoConfig

    defaults = LMDemoConfig()
    epochs, max_steps = options["epochs"], options["max_steps"]
    budget = ({"epochs": epochs, "max_steps": max_steps or 0} if epochs is not None
              else {"max_steps": max_steps} if max_steps is not None else {})
    config = replace(defaults, student_layers=options["student_layers"], distill=replace(defaults.distill, **budget))
    report = run(LMDemo(config, overwrite=options["overwrite"], show_progress=not options["quiet"]), out=options["out"])
    log(json.dumps({"report": str(Path(options["out"]) / "report.json"), **report["demo"]["timings"]}))
