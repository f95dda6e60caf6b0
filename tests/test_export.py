import json

import numpy as np
import onnx
import pytest

from edgekd.errors import UserError
from edgekd.exporting.parity import check_parity, random_batches
from edgekd.sessions import onnx_session
from edgekd.exporting.stage import export
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


# ---------------------------------------------------------------- fp16, static int8, data


@pytest.fixture(scope="module")
def validation():
    from conftest import LABELS, make_rows

    from edgekd.data import TextDataset

    rows = make_rows(48, seed=11)
    return TextDataset(texts=[r["text"] for r in rows], labels=[LABELS.index(r["label"]) for r in rows],
                       label_names=LABELS)


@pytest.fixture(scope="module")
def exported_with_data(student_dir, validation, tmp_path_factory):
    out = tmp_path_factory.mktemp("export-data") / "artifacts"
    names = ["onnx-fp32", "onnx-fp16", "onnx-int8", "onnx-int8-static"]
    artifacts = export(student_dir, targets=[load_target(n) for n in names], out=out,
                       validation=validation, validation_source="val.jsonl")
    return out, {a.target: a for a in artifacts}


def test_fp16_is_half_precision_within_1e2_of_pytorch(exported_with_data):
    out, artifacts = exported_with_data
    graph = onnx.load(str(out / "onnx-fp16" / "model.onnx")).graph
    weights = [t for t in graph.initializer if len(t.dims) == 2]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # logits stay fp32
    parity = artifacts["onnx-fp16"].parity
    assert parity.tolerance == 1e-2 and parity.max_abs_diff <= 1e-2 and parity.passed


def test_static_int8_is_qdq_and_keeps_the_mask_path_float(exported_with_data):
    from edgekd.exporting.quantize import mask_path_nodes

    out, artifacts = exported_with_data
    model = onnx.load(str(out / "onnx-int8-static" / "model.onnx"))
    kinds = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "MatMul"} <= kinds
    mask_nodes = mask_path_nodes(out / "onnx-fp32" / "model.onnx")
    assert any(name.endswith("Softmax") for name in mask_nodes)
    produced_by = {output: node for node in model.graph.node for output in node.output}
    for node in model.graph.node:  # no mask-path node reads a dequantised tensor
        if node.name in mask_nodes:
            assert all(produced_by.get(i) is None or produced_by[i].op_type != "DequantizeLinear"
                       for i in node.input), node.name
    manifest = json.loads((out / "onnx-int8-static" / "edgekd.json").read_text())
    assert manifest["calibration"]["source"].startswith("val.jsonl")
    assert manifest["calibration"]["method"] == "minmax"


def test_every_artifact_reports_accuracy_on_the_validation_data(exported_with_data, validation):
    out, artifacts = exported_with_data
    for name, artifact in artifacts.items():
        accuracy = artifact.accuracy
        assert accuracy.rows == len(validation) and accuracy.labelled == len(validation)
        assert accuracy.passed and accuracy.drop <= accuracy.budget
        manifest = json.loads((out / name / "edgekd.json").read_text())
        assert manifest["accuracy"]["source"] == "val.jsonl"
        assert manifest["accuracy"]["agreement"] == pytest.approx(accuracy.agreement)
    assert artifacts["onnx-fp32"].accuracy.agreement == 100.0


def test_without_data_the_manifest_says_accuracy_was_not_checked(exported):
    out, artifacts = exported
    manifest = json.loads((out / "onnx-int8" / "edgekd.json").read_text())
    assert manifest["accuracy"]["checked"] is False and "--data" in manifest["accuracy"]["note"]
    assert artifacts["onnx-int8"].accuracy is None


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_entropy_and_percentile_calibration_survive_the_attention_mask(student_dir, validation,
                                                                      tmp_path, method):
    path = tmp_path / f"static-{method}.yaml"
    path.write_text(f"base: onnx-int8-static\nquantization:\n  calibration_method: {method}\n"
                    "  calibration_samples: 16\n  accuracy_aware: false\n"
                    "budgets:\n  max_accuracy_drop: 100\n")
    (artifact,) = export(student_dir, targets=[load_target(str(path))], out=tmp_path / "out",
                         calibration=validation, validation=validation)
    session = onnx_session(artifact.model_file)
    model, tokenizer = load_classifier(student_dir)
    parity = check_parity(session, model, random_batches(tokenizer, [i.name for i in session.get_inputs()]),
                          tolerance=None)
    assert np.isfinite(parity.max_abs_diff) and parity.max_abs_diff < 1.0


def test_dynamo_exporter_is_selectable_and_matches_pytorch(student_dir, tmp_path):
    (artifact,) = export(student_dir, targets=[load_target("onnx-fp32")], out=tmp_path,
                         exporter="dynamo")
    assert artifact.parity.passed and artifact.parity.max_abs_diff <= 1e-4
    manifest = json.loads((artifact.folder / "edgekd.json").read_text())
    assert manifest["exporter"] == "dynamo"


# ---------------------------------------------------------------- bad input


def test_student_folder_without_tokenizer_or_config_is_refused(student_dir, tmp_path):
    import shutil

    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(student_dir / name, no_tokenizer / name)
    with pytest.raises(UserError, match="has no tokenizer files"):
        export(no_tokenizer, targets=[load_target("onnx-fp32")], out=tmp_path / "out")
    (no_tokenizer / "config.json").unlink()
    with pytest.raises(UserError, match="has no config.json"):
        export(no_tokenizer, targets=[load_target("onnx-fp32")], out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_onnx_file_gives_a_clear_error(exported, tmp_path):
    from edgekd.exporting.onnx import check_onnx_file

    out, _ = exported
    data = (out / "onnx-fp32" / "model.onnx").read_bytes()
    truncated = tmp_path / "model.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or truncated"):
        check_onnx_file(truncated)
    with pytest.raises(UserError, match="corrupt or truncated"):
        onnx_session(truncated)


def test_failed_parity_is_an_error_and_leaves_no_partial_artifact(student_dir, tmp_path, monkeypatch):
    from edgekd.exporting import parity

    # A tolerance no float export can meet: the real check must fail and clean up.
    monkeypatch.setitem(parity.LOGIT_TOLERANCE, "fp32", 0.0)
    with pytest.raises(UserError, match="differ from PyTorch"):
        export(student_dir, targets=[load_target("onnx-fp32")], out=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_same_target_twice_is_refused(student_dir, tmp_path):
    with pytest.raises(UserError, match="given twice"):
        export(student_dir, targets=[load_target("onnx-fp32")] * 2, out=tmp_path)
