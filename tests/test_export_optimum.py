"""Interop with Optimum, run in its own environment (`make test-optimum`).

optimum-onnx pins transformers<4.58, so these tests are skipped in the main environment
(transformers 5) and run in the second virtual environment that installs edgekd[optimum].
"""

import numpy as np
import pytest
import torch

pytest.importorskip("optimum.onnxruntime", reason="needs edgekd[optimum]: make test-optimum")

from edgekd.exporting.stage import export  # noqa: E402
from edgekd.models import load_classifier  # noqa: E402
from edgekd.targets import load_target  # noqa: E402

TEXTS = ["great good table w1 w2", "awful w3 w4 w5 w6 w7 w8", "chair", "fine w9 poor w10 door"]


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    """The tiny 2-layer student of conftest, its tokenizer built from a vocab file:
    transformers 4 (which optimum-onnx needs) takes no in-memory vocabulary."""
    from conftest import FILLER, KEYWORDS, make_classifier
    from transformers import BertTokenizerFast

    from edgekd.models import save_model

    folder = tmp_path_factory.mktemp("optimum-student")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + FILLER + [
        w for words in KEYWORDS.values() for w in words]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    save_model(make_classifier("bert", layers=2), BertTokenizerFast(vocab_file=str(folder / "vocab.txt")),
               folder)
    return folder


def _pytorch_logits(student_dir, tokenizer, encoded):
    model, _ = load_classifier(student_dir)
    with torch.no_grad():
        return model(**encoded).logits.numpy()


@pytest.mark.parametrize("target", ["onnx-fp32", "onnx-int8"])
def test_edgekd_artifact_loads_with_ort_model_for_sequence_classification(student_dir, tmp_path, target):
    from optimum.onnxruntime import ORTModelForSequenceClassification

    (artifact,) = export(student_dir, targets=[load_target(target)], out=tmp_path)
    model = ORTModelForSequenceClassification.from_pretrained(artifact.folder)
    _, tokenizer = load_classifier(student_dir)
    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    logits = model(**encoded).logits
    logits = logits.numpy() if hasattr(logits, "numpy") else np.asarray(logits)
    reference = _pytorch_logits(student_dir, tokenizer, encoded)
    if target == "onnx-fp32":
        np.testing.assert_allclose(logits, reference, atol=1e-4)
    else:
        assert (logits.argmax(-1) == reference.argmax(-1)).mean() >= 0.75
    assert model.config.id2label == load_classifier(student_dir)[0].config.id2label


def test_optimum_exporter_passes_the_same_parity_checks(student_dir, tmp_path):
    (artifact,) = export(student_dir, targets=[load_target("onnx-fp32")], out=tmp_path,
                         exporter="optimum")
    assert artifact.parity.passed and artifact.parity.max_abs_diff <= 1e-4
    import json

    assert json.loads((artifact.folder / "edgekd.json").read_text())["exporter"] == "optimum"
