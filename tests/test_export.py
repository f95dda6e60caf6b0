import json

import numpy as np
import onnx
import pytest

from edgekd.errors import UserError
from edgekd.export.parity import check_parity, onnx_session, random_batches
from edgekd.export.stage import export
from edgekd.models import load_classifier
from edgekd.targets import load_target


@pytest.fixture(scope="module")
def exported(student_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "artifacts"
    artifacts = export(student_dir, targets=[load_target("onnx-fp32"), load_target("onnx-int8")], out=out)
    return out, {a.target: a for a in artifacts}


def test_fp32_export_matches_pytorch_on_padded_batches_of_varying_shape(exported, student_dir):
    out, artifacts = exported
    model, tokenizer = load_classifier(student_dir)
    session = onnx_session(out / "onnx-fp32" / "model.onnx")
    names = [i.name for i in session.get_inputs()]
    feeds = random_batches(tokenizer, names, seed=7, shapes=((1, 5), (5, 40), (8, 100)))
    parity = check_parity(session, model, feeds, tolerance=1e-4)
    assert parity.passed and parity.max_abs_diff <= 1e-4 and parity.rows == 14
    assert artifacts["onnx-fp32"].parity.passed


def test_int8_is_smaller_quantised_and_agrees_with_fp32(exported):
    out, artifacts = exported
    graph = onnx.load(str(out / "onnx-int8" / "model.onnx")).graph
    assert any(node.op_type in ("DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul")
               for node in graph.node)
    assert artifacts["onnx-int8"].size_bytes < 0.8 * artifacts["onnx-fp32"].size_bytes  # tiny model: graph overhead dominates
    assert artifacts["onnx-int8"].parity.agreement >= 0.7


def test_artifact_folder_loads_alone_and_has_a_manifest(exported):
    out, _ = exported
    folder = out / "onnx-int8"
    assert {"model.onnx", "config.json", "tokenizer.json", "edgekd.json"} <= {p.name for p in folder.iterdir()}
    manifest = json.loads((folder / "edgekd.json").read_text())
    assert manifest["precision"] == "int8-dynamic" and manifest["size_bytes"] > 0
    assert len(manifest["source_sha256"]) == 64 and "onnxruntime" in manifest["versions"]
    assert set(manifest["inputs"]) == {"input_ids", "attention_mask", "token_type_ids"}


def test_existing_output_is_refused_and_unknown_target_lists_known(exported, student_dir):
    out, _ = exported
    with pytest.raises(UserError, match="already exists.*--overwrite"):
        export(student_dir, targets=[load_target("onnx-fp32")], out=out)
    with pytest.raises(UserError, match="unknown target 'tpu'.*onnx-fp32"):
        load_target("tpu")


def test_bad_target_yaml_names_file_and_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("description: x\nformat: onnx\nprecision: fp32\nthreads: 4\n")
    with pytest.raises(UserError, match=r"mine.yaml: unknown key 'threads'"):
        load_target(str(path))
    path.write_text("format: [onnx\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_target(str(path))


def test_corrupt_onnx_file_gives_a_clear_error(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(UserError, match="corrupt or truncated"):
        onnx_session(bad)
