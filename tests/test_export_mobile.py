"""Mobile formats: .ort (ONNX Runtime Mobile) and .pte (ExecuTorch), loaded back in their runtimes."""

import json

import numpy as np
import pytest

from edgekd.export.mobile import required_operators
from edgekd.export.parity import check_parity, random_batches
from edgekd.sessions import ExecutorchSession, onnx_session
from edgekd.export.stage import export
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


def test_the_terminal_stays_quiet_without_debug(student_dir, tmp_path):
    # a real process: warnings filters, logging and native stderr as a user's terminal sees them
    pytest.importorskip("executorch")
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "edgekd", "export", str(student_dir), "--target", "executorch",
                             "--target", "onnx-int8", "--out", str(tmp_path / "e")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == ""  # no FutureWarning, no [cpuinfo_utils.cpp:...] line, no root-logger warning
    assert "exported to" in result.stdout
