"""The architecture matrix: every model type in transformers' own task mappings, built tiny from
its config class and taken through distill (a layer cut, and --student-config) -> export
onnx-int8 -> bench, as a user would (the Python API the command line wraps).

Each family ends in one outcome per step: "pass", "refused: <edgekd's one line>" (refused
before any work, naming the family), or "fail: <what broke>". Families whose config class
cannot be made tiny by one generic rule (multimodal wrappers, encoder-decoders without a
text-only config, custom code) are listed as "not built" with the reason.

    python tests/matrix.py [--task TASK] [--only TYPE ...]   # runs it, writes docs/architectures.md
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TASKS = {"text-classification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
         "causal-lm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
         "image-classification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"}
STEPS = ("distill cut", "distill config", "export onnx-int8", "bench")
MAX_PARAMETERS = 5_000_000
STEP_SECONDS = 120  # a step of a tiny model past this is recorded as a failure


class StepTooLong(BaseException):  # not an Exception: no library's handler takes it for its own
    """A step ran past STEP_SECONDS."""


def _too_long(signum, frame):
    raise StepTooLong(f"ran past {STEP_SECONDS} s")


signal.signal(signal.SIGALRM, _too_long)  # a tiny model; past this the generic rule did not shrink the family

# Sizes set on every config that has the field (attribute maps such as GPT-2's n_embd included).
SIZES = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
             intermediate_size=64, ffn_dim=64, max_position_embeddings=256, embedding_size=32, d_model=32,
             num_layers=4, encoder_layers=4, decoder_layers=4, encoder_attention_heads=4,
             decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_experts=4,
             num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
             shared_expert_intermediate_size=16, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8,
             qk_nope_head_dim=8, v_head_dim=8, sliding_window=16, attention_window=8, first_k_dense_replace=1,
             n_group=1, topk_group=1, rotary_dim=8, partial_rotary_factor=0.5, global_attn_every_n_layers=2,
             local_attention=16, max_window_layers=2, num_global_layers=1)
IMAGE_SIZES = dict(image_size=64, patch_size=16, num_channels=3, hidden_size=32, num_hidden_layers=4,
                   num_attention_heads=4, intermediate_size=64, embed_dim=16, embedding_size=8,
                   window_size=2)  # Swin: divides every stage of a 64-pixel picture (16, 8, 4, 2 patches)
PIXELS = 64


def families(task: str) -> list[str]:
    from transformers.models.auto import modeling_auto

    return sorted(getattr(modeling_auto, TASKS[task]))


def tiny_model(model_type: str, task: str, *, vocab_size: int, token_ids: dict):
    """A tiny random model of `model_type` for `task`, or raise NotBuilt saying why."""
    import transformers
    from transformers import AutoConfig

    from conftest import LABELS
    from test_vision import LABELS as IMAGE_LABELS

    try:
        default = AutoConfig.for_model(model_type)
    except Exception as error:  # noqa: BLE001
        raise NotBuilt(f"config: {_line(error)}") from error
    sizes = dict(IMAGE_SIZES) if task == "image-classification" else dict(SIZES, vocab_size=vocab_size, **token_ids)
    if task == "image-classification":
        for key, value in {"hidden_sizes": 8, "depths": 1, "num_heads": 1, "embed_dims": 8, "neck_hidden_sizes": 8,
                           "hidden_dims": 8, "num_attention_heads": 2}.items():
            current = _field(default, key)
            if isinstance(current, (list, tuple)) and current and isinstance(current[0], int):
                sizes[key] = [value * (2 ** i if key in ("hidden_sizes", "embed_dims", "hidden_dims") and value > 1
                                       else 1) for i in range(len(current))]
    if _field(default, "depths"):  # a network of stages keeps its own stem: a ViT's patch would shrink it away
        sizes.pop("patch_size", None)
    given = {key: value for key, value in sizes.items()  # a list field keeps its kind (CvT's embed_dim per stage)
             if _has(default, key)
             and isinstance(_field(default, key), (list, tuple)) == isinstance(value, (list, tuple))}
    if _field(default, "is_encoder_decoder"):  # T5-like classifiers start their decoder at the pad token
        given.setdefault("decoder_start_token_id", token_ids.get("pad_token_id", 0))
    if task != "causal-lm":
        labels = IMAGE_LABELS if task == "image-classification" else LABELS
        given.update(num_labels=3, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    try:
        config = AutoConfig.for_model(model_type, **given)
        mapped = getattr(transformers.models.auto.modeling_auto, TASKS[task]).get(model_type)
        if not getattr(config, "architectures", None) and mapped:  # DeiT, LeViT: the auto class picks by it
            config.architectures = [mapped if isinstance(mapped, str) else mapped[0]]
        auto = getattr(__import__("transformers"), {"text-classification": "AutoModelForSequenceClassification",
                                                    "causal-lm": "AutoModelForCausalLM",
                                                    "image-classification": "AutoModelForImageClassification"}[task])
        with torch.device("meta"):  # counted before any memory is spent
            size = sum(p.numel() for p in auto.from_config(config).parameters())
        if size > MAX_PARAMETERS:
            raise NotBuilt(f"{size:,} parameters after the generic shrink")
        torch.manual_seed(0)
        model = auto.from_config(config, attn_implementation="eager").eval()
        started = time.perf_counter()
        with torch.no_grad():  # the shrink must leave a model that runs, fast
            if task == "image-classification":
                model(pixel_values=torch.rand(1, 3, PIXELS, PIXELS))
            else:
                model(input_ids=torch.tensor([[2] + list(range(10, 24)) + [3], [2] + list(range(30, 40)) + [3] + [0] * 4]),
                      attention_mask=torch.tensor([[1] * 16, [1] * 12 + [0] * 4]))
        if time.perf_counter() - started > 2:
            raise NotBuilt(f"one tiny forward pass takes {time.perf_counter() - started:.0f} s after the generic shrink")
    except NotBuilt:
        raise
    except Exception as error:  # noqa: BLE001
        raise NotBuilt(f"model: {_line(error)}") from error
    return model.eval()


def _field(config, key: str):
    """A config field's value, or None (Gemma 4 refuses to read per-layer fields globally)."""
    try:
        return getattr(config, key, None)
    except Exception:  # noqa: BLE001
        return None


def _has(config, key: str) -> bool:
    return key in config.to_dict() or key in getattr(config, "attribute_map", {})


class NotBuilt(Exception):
    """The generic rule cannot make this family tiny."""


def _line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160] if text else ''}"


def run_family(model_type: str, task: str, root: Path) -> dict:
    """One family through every step; {"family", "task", "built", steps..., "seconds"}."""
    import edgekd
    from edgekd.errors import UserError

    from conftest import make_rows, make_tokenizer
    from lm_tiny import make_lm_tokenizer, make_texts

    started = time.perf_counter()
    result = {"family": model_type, "task": task, "built": "yes", **{step: "-" for step in STEPS}}
    if task == "image-classification":
        from test_vision import pictures, processor

        preprocessor, data = processor(PIXELS), _picture_rows(pictures(24))
    elif task == "causal-lm":
        preprocessor = make_lm_tokenizer()
        data = [{"text": text} for text in make_texts(24)]
    else:
        preprocessor = make_tokenizer()
        data = make_rows(32, seed=1)
    text = task != "image-classification"
    ids = {"pad_token_id": preprocessor.pad_token_id, "bos_token_id": 2, "eos_token_id": 3} if text else {}
    try:
        model = tiny_model(model_type, task, vocab_size=len(preprocessor) + 16 if text else 0, token_ids=ids)
    except NotBuilt as reason:
        return {**result, "built": f"no: {reason}", "seconds": round(time.perf_counter() - started, 1)}
    teacher = root / "teacher"
    model.save_pretrained(teacher)
    preprocessor.save_pretrained(teacher)
    common = dict(data=data, quiet=True, log=None, cache_dir=root / "cache", allow_poor_student=True)
    training = dict(max_steps=2, batch_size=4, max_length=24) if task != "image-classification" else dict(max_steps=2, batch_size=4)
    layers = getattr(model.config, "num_hidden_layers", None)
    if task == "image-classification":
        spec = ("depth=1" if getattr(model.config, "depths", None) else
                "width=0.5" if getattr(model.config, "depth_multiplier", None) else  # MobileNet
                "layers=2,hidden=16,heads=2,intermediate=32")
    else:
        spec = "hidden=16,layers=2,heads=2,intermediate=32"
    # short texts and few rounds; the memory probe (a child process per model) is left to its own tests
    bench_options = {"causal-lm": dict(max_length=32, new_tokens=4, rounds=1),
                     "text-classification": dict(max_length=32, sequence_length=[16], memory=False, repeats=2,
                                                 throughput_batch=0, plot=False),
                     "image-classification": dict(repeats=2, throughput_batch=0, plot=False)}[task]
    export_options = dict(max_length=32) if text else {}
    steps = [("distill cut", lambda: edgekd.distill(teacher=str(teacher), out=root / "cut",
                                                    student_layers="2" if layers is None or layers > 2 else "1",
                                                    **common, **training)),
             ("distill config", lambda: edgekd.distill(teacher=str(teacher), out=root / "config", student_config=spec,
                                                       **common, **training)),
             ("export onnx-int8", lambda: edgekd.export(student(), targets=["onnx-int8"], out=root / "export",
                                                        quiet=True, log=None, **export_options)),
             ("bench", lambda: edgekd.bench(teacher=str(teacher), student=student(), artifacts=[root / "export"],
                                            data=data, out=root / "report", quiet=True, log=None,
                                            **bench_options))]
    def student() -> Path:  # the layer-cut student, else the --student-config one (MobileNet cannot be cut)
        return root / ("cut" if result["distill cut"] == "pass" else "config")

    for step, run in steps:
        signal.alarm(STEP_SECONDS)
        if step in ("export onnx-int8", "bench") and "pass" not in (result["distill cut"], result["distill config"]):
            result[step] = "-"
            continue
        if step == "bench" and not result["export onnx-int8"].startswith("pass"):
            continue
        try:
            run()
            result[step] = "pass"
        except UserError as error:
            result[step] = f"refused: {str(error)[:300]}"
        except BaseException as error:  # noqa: BLE001 - the matrix records what broke
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise
            frames = traceback.extract_tb(error.__traceback__)
            where = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames) if "edgekd" in f.filename), "")
            result[step] = f"fail: {_line(error)} ({where})"
        finally:
            signal.alarm(0)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _picture_rows(dataset) -> list[dict]:
    from io import BytesIO

    from PIL import Image

    rows = []
    for index, label in enumerate(dataset.labels):
        buffer = BytesIO()
        Image.fromarray(dataset.images[index]).save(buffer, format="PNG")
        rows.append({"image": buffer.getvalue(), "label": dataset.label_names[label]})
    return rows


TABLE = Path(__file__).resolve().parents[1] / "docs" / "architectures.md"
TASK_TITLES = {"text-classification": "Text classification", "causal-lm": "Causal language models",
               "image-classification": "Image classification"}


def short(outcome: str) -> str:
    """A table cell: pass, the refusal's reason (paths and temporary names left out), or -."""
    import re

    if outcome in ("pass", "-"):
        return outcome
    kind, _, reason = outcome.partition(": ")
    reason = re.sub(r"'?/[^\s',;)]+'?", "…", reason)  # temporary paths differ per run
    reason = re.sub(r"\s+", " ", reason).replace("|", "/")
    return f"{kind}: {reason[:140]}{'…' if len(reason) > 140 else ''}"


def render(outcomes: list[dict]) -> str:
    """docs/architectures.md from the matrix's outcomes."""
    import transformers

    lines = ["# Architectures", "",
             "Generated by `tests/test_architecture_matrix.py` (the slow tier of `make test`; "
             "`python tests/matrix.py --write` regenerates it) from transformers "
             f"{transformers.__version__}'s own task mappings. Every model type of each task is built tiny from its "
             "config class by one generic rule, then taken through the Python API as a user would: distill with "
             "a layer cut (`student_layers`), distill with `student_config`, export `onnx-int8` and bench (the "
             "layer-cut student, else the `student_config` one; for causal "
             "LMs: perplexity and greedy decoding). A cell is `pass`, `refused:` with edgekd's one line (an "
             "architecture a step cannot serve is refused by name, never a traceback), or `-` (not reached). "
             "Families the generic rule cannot make tiny and runnable are listed as not built.", ""]
    for task, title in TASK_TITLES.items():
        rows = sorted((o for o in outcomes if o["task"] == task), key=lambda o: o["family"])
        if not rows:
            continue
        built = [o for o in rows if o["built"] == "yes"]
        passing = [o for o in built if all(o[step] == "pass" for step in STEPS)]
        lines += [f"## {title}", "",
                  f"{len(rows)} model types: {len(passing)} pass every step, {len(built) - len(passing)} are "
                  f"refused by name at some step, {len(rows) - len(built)} are not built tiny.", "",
                  "| family | " + " | ".join(STEPS) + " |", "|---" * (len(STEPS) + 1) + "|"]
        lines += [f"| {o['family']} | " + " | ".join(short(o[step]) for step in STEPS) + " |" for o in built]
        lines += ["", "Not built tiny: " + "; ".join(f"{o['family']} ({short(o['built'][4:])})"
                                                     for o in rows if o["built"] != "yes") + ".", ""]
    return "\n".join(lines)


def statuses(table: str) -> dict:
    """{(section, family): (status per step...)} of a rendered table: pass, refused or -, and
    "not built"; what the published table must agree with a run on (the wording of a refusal
    may change with a library's messages, what passes and what is refused may not)."""
    found, section = {}, None
    for line in table.splitlines():
        if line.startswith("## "):
            section = line[3:]
        elif line.startswith("| ") and not line.startswith("| family"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            found[section, cells[0]] = tuple(cell.split(":")[0] for cell in cells[1:])
        elif line.startswith("Not built tiny: "):
            for entry in line[len("Not built tiny: "):].split("; "):
                found[section, entry.split(" (")[0]] = ("not built",)
    return found


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--task", action="append", choices=list(TASKS))
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--results", type=Path, default=Path("runs/architectures.jsonl"))
    parser.add_argument("--shard", default="0/1", help="K/N: the K-th of N equal shares of the families")
    parser.add_argument("--write", action="store_true", help=f"write {TABLE.name} from the results")
    args = parser.parse_args(argv)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # tiny models; shards run side by side
    shard, shards = map(int, args.shard.split("/"))
    cases = [(task, family) for task in args.task or list(TASKS) for family in families(task)
             if not args.only or family in args.only]
    done = {}
    if args.results.exists():  # a run that stopped goes on where it was
        done = {(o["task"], o["family"]): o for o in map(json.loads, args.results.read_text().splitlines())}
    with args.results.open("a") as sink:
        for task, family in cases[shard::shards]:
            if (task, family) in done:
                continue
            with tempfile.TemporaryDirectory() as folder:
                outcome = run_family(family, task, Path(folder))
            print(json.dumps(outcome), flush=True)
            sink.write(json.dumps(outcome) + "\n")
            sink.flush()
            done[task, family] = outcome
    if args.write:
        TABLE.write_text(render(list(done.values())))


if __name__ == "__main__":
    main(sys.argv[1:])
