"""Tiny random models, a tokenizer and data built in-process: no downloads."""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

import pytest
import torch

# Tests never read or write the user's cache (teachers, teacher outputs, machine peaks).
os.environ["EDGEKD_CACHE"] = tempfile.mkdtemp(prefix="edgekd-test-cache-")

LABELS = ["negative", "neutral", "positive"]
KEYWORDS = {"negative": ["awful", "bad", "poor"], "neutral": ["table", "chair", "door"],
            "positive": ["great", "good", "fine"]}
FILLER = [f"w{i}" for i in range(60)]


def make_tokenizer():
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + FILLER + [
        w for words in KEYWORDS.values() for w in words]
    return BertTokenizer(vocab={w: i for i, w in enumerate(words)})


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give biases and LayerNorm weights random values: all-zero fresh biases hide bugs
    and break some quantisers."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
                noise = torch.randn(parameter.shape, generator=generator) * 0.1
                parameter.copy_((1.0 if name.endswith("weight") else 0.0) + noise)
    return model


def make_config(arch: str = "bert", *, layers: int = 4, hidden: int = 32, heads: int = 4,
                vocab_size: int = 80, num_labels: int = 3):
    from transformers import AutoConfig

    common = dict(num_labels=num_labels, id2label=dict(enumerate(LABELS[:num_labels])),
                  label2id={n: i for i, n in enumerate(LABELS[:num_labels])}, vocab_size=vocab_size)
    if arch == "distilbert":
        return AutoConfig.for_model("distilbert", n_layers=layers, dim=hidden, n_heads=heads,
                                    hidden_dim=4 * hidden, max_position_embeddings=128, **common)
    extra = {"electra": {"embedding_size": hidden}, "albert": {"embedding_size": hidden // 2},
             # relative attention over both content and position: DeBERTa-v2's own path
             "deberta-v2": {"relative_attention": True, "pos_att_type": ["p2c", "c2p"],
                            "max_relative_positions": 64, "position_buckets": 32},
             # alternating local and global attention, no token types
             "modernbert": {"global_attn_every_n_layers": 2, "local_attention": 16, "cls_token_id": 2,
                            "sep_token_id": 3, "bos_token_id": 2, "eos_token_id": 3},
             # bottlenecked layers with stacked feed-forward networks
             "mobilebert": {"embedding_size": hidden // 2, "intra_bottleneck_size": hidden // 2,
                            "true_hidden_size": hidden // 2, "num_feedforward_networks": 2}}.get(arch, {})
    return AutoConfig.for_model(arch, num_hidden_layers=layers, hidden_size=hidden,
                                num_attention_heads=heads, intermediate_size=4 * hidden,
                                max_position_embeddings=130, pad_token_id=0,
                                **extra, **common)


def make_classifier(arch: str = "bert", *, seed: int = 0, **config_options):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    config = make_config(arch, **config_options)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    return randomize_(model, seed).eval()


def make_rows(count: int, *, seed: int = 0) -> list[dict]:
    """Texts whose label is given by one keyword among filler words: learnable in a few steps."""
    generator = random.Random(seed)
    rows = []
    for _ in range(count):
        label = generator.choice(LABELS)
        words = generator.sample(FILLER, generator.randint(3, 20))
        words.insert(generator.randrange(len(words) + 1), generator.choice(KEYWORDS[label]))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run_cli(*args):
    """The CLI through typer's runner, arguments stringified."""
    from typer.testing import CliRunner

    from edgekd.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def assert_clean_error(result, pattern, *, code=1):
    """One `error:` line matching `pattern`, exit `code`, no traceback."""
    import re

    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert re.search(pattern, result.output), result.output
    assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory) -> Path:
    """A tiny 4-layer BERT classifier saved with its tokenizer, like a user's teacher folder."""
    folder = tmp_path_factory.mktemp("teacher")
    make_classifier("bert", layers=4).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def student_dir(tmp_path_factory, teacher_dir) -> Path:
    """A 2-layer student cut from the tiny teacher, saved as distill would save it."""
    from edgekd.models import load_classifier, save_model, select_layers

    teacher, tokenizer = load_classifier(teacher_dir)
    folder = tmp_path_factory.mktemp("student")
    save_model(select_layers(teacher, [0, 3]), tokenizer, folder)
    return folder


@pytest.fixture
def train_file(tmp_path) -> Path:
    return write_jsonl(make_rows(64, seed=1), tmp_path / "train.jsonl")


@pytest.fixture
def test_file(tmp_path) -> Path:
    return write_jsonl(make_rows(24, seed=2), tmp_path / "test.jsonl")


def benchmark_module(name: str):
    """benchmarks/<name>.py, imported as a module (benchmarks/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
