"""edgekd from Python, end to end, on a tiny classifier built here (no download, about a minute
on a laptop CPU): distil a 1-layer student from a 2-layer teacher, export it to ONNX fp32 and
int8, and bench all of them.

    python examples/python_api.py [OUT]     # default OUT: runs/python-api

Each call takes the command line's options as keywords (`student_layers` for
--student-layers) and returns what it wrote: a Student, the artifacts, a Report.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import edgekd

LABELS = ["negative", "neutral", "positive"]
WORDS = {"negative": ["awful", "bad", "poor"], "neutral": ["table", "chair", "door"],
         "positive": ["great", "good", "fine"]}
FILLER = [f"w{i}" for i in range(40)]


def tiny_teacher(folder: Path) -> Path:
    """A 2-layer BERT classifier and its WordPiece tokenizer, saved like any teacher folder."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FILLER, *sum(WORDS.values(), [])]
    config = BertConfig(vocab_size=len(vocabulary), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=len(LABELS),
                        id2label=dict(enumerate(LABELS)), label2id={name: i for i, name in enumerate(LABELS)})
    BertForSequenceClassification(config).save_pretrained(folder)
    BertTokenizer(vocab={word: i for i, word in enumerate(vocabulary)}).save_pretrained(folder)
    return folder


def rows(count: int, seed: int) -> list[dict]:
    """Texts whose label is one keyword among filler words."""
    generator = random.Random(seed)
    made = []
    for _ in range(count):
        label = generator.choice(LABELS)
        words = generator.sample(FILLER, 8) + [generator.choice(WORDS[label])]
        generator.shuffle(words)
        made.append({"text": " ".join(words), "label": label})
    return made


def main(out: Path) -> edgekd.Report:
    teacher = tiny_teacher(out / "teacher")
    train, test = rows(96, seed=0), rows(48, seed=1)  # data may be a path, a list of dicts or a Dataset

    student = edgekd.distill(teacher=str(teacher), data=train, out=out / "student", student_layers="1",
                             epochs=2, max_length=32, overwrite=True, quiet=True)
    print(f"student: {student.path}, {student.steps} steps, validation {student.validation}")

    artifacts = edgekd.export(student, targets=["onnx-fp32", "onnx-int8"], out=out / "export", data=test,
                              overwrite=True, log=None)
    for artifact in artifacts:
        print(f"{artifact.target}: {artifact.model_file} ({artifact.size_bytes / 1e6:.2f} MB), "
              f"parity {artifact.parity.max_abs_diff:.1e}")

    report = edgekd.bench(teacher=str(teacher), student=student, artifacts=artifacts, data=test,
                          out=out / "bench", max_length=32, sequence_length=[32], repeats=5, throughput_batch=0,
                          memory=False, quiet=True, log=None)
    for row in report.rows:
        print(f"{row['name']:<18} accuracy {row['quality']['accuracy']:.3f}  p50 {row['latency']['p50_ms']:.2f} ms")
    print(f"report: {report.folder / 'report.json'}; gates {'passed' if report.passed else 'failed'}")
    return report


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/python-api"))
