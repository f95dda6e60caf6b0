"""Mobile formats: .ort (ONNX Runtime Mobile) and .pte (ExecuTorch), loaded back in their runtimes."""

import json

import numpy as np
import pytest

from edgekd.exporting.mobile import required_operators
from edgekd.exporting.parity import check_parity, random_batches
from edgekd.sessions import ExecutorchSession, onnx_session
from edgekd.exporting.stage import export
from edgekd.models import load_classifier
from edgekd.targets import load_target


@pytest.fixture(scope="module")
def ort_artifact(student_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ort")
    (artifact,) = export(student_dir, targets=[load_target("ort-mobile")], out=out)
    return artifact


def test_ort_folder_has_the_model_and_its_required_operators(ort_artifact):
    folder = ort_artifact.folder
    names = {p.name for p in folder.iterdir()}
    assert {"model.ort", "required_operators.config", "config.json", "edgekd.json"} <= names
    assert "model.onnx" not in names  # the intermediate ONNX file is not shipped
    operators = required_operators(folder / "required_operators.config")
    listed = {op for ops in operators.values() for op in ops}
    assert {"MatMulInteger", "DynamicQuantizeLinear", "Softmax"} <= listed  # int8 kernels included
    manifest = json.loads((folder / "edgekd.json").read_text())
    assert manifest["format"] == "ort" and manifest["model_file"] == "model.ort"
    assert manifest["required_operators"] == operators


def test_ort_file_loads_back_in_ort_format_and_agrees_with_pytorch(ort_artifact, student_dir):
    assert ort_artifact.model_file.read_bytes()[4:8] == b"ORTM"  # flatbuffer identifier
    session = onnx_session(ort_artifact.model_file, ort_format=True)
    model, tokenizer = load_classifier(student_dir)
    parity = check_parity(session, model, random_batches(tokenizer, [i.name for i in session.get_inputs()],
                                                         seed=3), tolerance=None)
    assert parity.agreement >= 0.7 and parity.max_abs_diff < 0.5
    assert ort_artifact.parity.shapes == [(1, 7), (3, 16), (4, 33), (2, 64)]


def test_executorch_pte_is_delegated_to_xnnpack_and_matches_pytorch(tmp_path_factory):
    pytest.importorskip("executorch", reason="install edgekd[executorch]")
    from conftest import make_classifier, make_tokenizer

    from edgekd.models import save_model

    # One layer: ExecuTorch's lowering passes take tens of seconds even on a tiny graph.
    student = tmp_path_factory.mktemp("pte-student")
    save_model(make_classifier("bert", layers=1), make_tokenizer(), student)
    out = tmp_path_factory.mktemp("pte")
    (artifact,) = export(student, targets=[load_target("executorch")], out=out)
    assert artifact.model_file.name == "model.pte" and artifact.parity.max_abs_diff <= 1e-4
    manifest = json.loads((artifact.folder / "edgekd.json").read_text())
    assert manifest["delegation"]["delegate_calls"] > 0 and "executorch" in manifest["versions"]
    # loaded back in the ExecuTorch runtime, at shapes the export never saw
    model, tokenizer = load_classifier(student)
    session = ExecutorchSession(artifact.model_file, list(manifest["inputs"]))
    parity = check_parity(session, model, random_batches(tokenizer, list(manifest["inputs"]), seed=9,
                                                         shapes=((5, 3), (2, 100))), tolerance=1e-4)
    assert parity.passed and np.isfinite(parity.max_abs_diff)


def test_executorch_int8_quantises_every_linear_with_pt2e_and_keeps_the_budget(tmp_path_factory, test_file):
    """PT2E for XNNPACK on a BERT student: transformers' attention mask adds an integer
    offset to an arange, and XNNPACKQuantizer's scalar pass made that index float; the
    first calibration call failed. The int8 .pte now runs, is smaller and agrees."""
    pytest.importorskip("executorch", reason="install edgekd[executorch]")
    pytest.importorskip("torchao")
    from conftest import make_classifier, make_tokenizer

    from edgekd.data import Columns, load_file
    from edgekd.models import save_model

    student = tmp_path_factory.mktemp("pte-int8-student")
    save_model(make_classifier("bert", layers=1, hidden=64), make_tokenizer(), student)
    model, tokenizer = load_classifier(student)
    data = load_file(test_file, columns=Columns(), label2id=model.config.label2id)
    out = tmp_path_factory.mktemp("pte-int8")
    fp32, int8 = export(student, targets=[load_target("executorch"), load_target("executorch-int8")],
                        out=out, validation=data)
    manifest = json.loads((int8.folder / "edgekd.json").read_text())
    assert manifest["precision"] == "int8-dynamic" and manifest["quantization"]["per_channel"] is True
    # the graph went to XNNPACK delegates; the int8 weights make the file smaller
    assert manifest["delegation"]["nodes_delegated"] > 0 and manifest["delegation"]["delegate_calls"] > 0
    assert int8.size_bytes < 0.4 * fp32.size_bytes  # Linear weights and the embedding tables in int8
    assert manifest["quantization"]["embeddings"].startswith("int8")
    assert int8.accuracy is not None and int8.accuracy.passed and int8.accuracy.agreement >= 90
    session = ExecutorchSession(int8.model_file, list(manifest["inputs"]))
    feeds = random_batches(tokenizer, list(manifest["inputs"]), seed=4, shapes=((3, 50),))
    quantized = session.run(["logits"], feeds[0])[0]
    reference = ExecutorchSession(fp32.model_file, list(manifest["inputs"])).run(["logits"], feeds[0])[0]
    assert 0 < np.abs(quantized - reference).max() < 0.2  # quantised (not equal), and close
    # a fresh process (as bench's) loads it too: the int8 lookup needs ExecuTorch's quantised kernels
    import subprocess
    import sys

    loaded = subprocess.run([sys.executable, "-c", "import sys; from edgekd.sessions import load_pte_method; "
                             "load_pte_method(sys.argv[1]); print('ok')", str(int8.model_file)],
                            capture_output=True, text=True, timeout=300)
    assert loaded.stdout.strip() == "ok", loaded.stderr[-500:]


def test_the_terminal_stays_quiet_without_debug(student_dir, tmp_path):
    # a real process: warnings filters, logging and native stderr as a user's terminal sees them
    pytest.importorskip("executorch")
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "edgekd", "export", str(student_dir), "--target", "executorch",
                             "--target", "executorch-int8", "--target", "onnx-int8", "--out", str(tmp_path / "e")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == ""  # no FutureWarning, no [cpuinfo_utils.cpp:...] line, no root-logger warning
    assert "exported to" in result.stdout
