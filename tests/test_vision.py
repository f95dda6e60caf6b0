"""Image classifiers through distill and export: tiny random ViT, ResNet, ConvNeXt and
MobileNetV2 models and pictures made in-process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.errors import UserError
from edgekd.targets import load_targets_for
from edgekd.vision.data import ImageDataset, load_images
from edgekd.vision.models import cut_student, feature_maps, make_image_student, shrunk_image_student

LABELS = ["circle", "stripe", "dots"]


def _config(kind: str, channels: int = 3):
    import transformers as t

    common = dict(num_channels=channels, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    if kind == "vit":
        return t.ViTForImageClassification(t.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4,
                                                       num_attention_heads=4, intermediate_size=64,
                                                       attn_implementation="eager", **common))
    if kind == "resnet":
        return t.ResNetForImageClassification(t.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64],
                                                             depths=[2, 2, 2, 2], **common))
    if kind == "convnext":
        return t.ConvNextForImageClassification(t.ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[2, 2, 2, 2],
                                                                 **common))
    return t.MobileNetV2ForImageClassification(t.MobileNetV2Config(image_size=32, depth_multiplier=0.35, **common))


def tiny(kind: str, channels: int = 3):
    torch.manual_seed(0)
    model = _config(kind, channels).eval()
    with torch.no_grad():  # random biases and norms: all-zero ones hide quantisation bugs
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return model


def processor(size: int = 32):
    from transformers import ViTImageProcessorPil

    return ViTImageProcessorPil(size={"height": size, "width": size})


def picture(label: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = (rng.random((24, 24, 3)) * 60).astype(np.uint8)
    image[:, label * 8:(label + 1) * 8] += 150
    return image


def pictures(count: int = 48) -> ImageDataset:
    return ImageDataset(images=[picture(i % 3, i) for i in range(count)], labels=[i % 3 for i in range(count)],
                        label_names=LABELS, source="made in-process")


def write_folder(root, per_class: int = 6):
    for label, name in enumerate(LABELS):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(picture(label, 10 * label + i)).save(root / name / f"{i}.png")
    return root


def save(model, folder):
    model.save_pretrained(folder)
    processor().save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------- data

def test_folder_tree_is_read_with_the_teachers_labels(tmp_path):
    root = write_folder(tmp_path / "photos")
    data = load_images(root, label2id={"dots": 0, "circle": 1, "stripe": 2})
    assert len(data) == 18 and data.label_names == ["dots", "circle", "stripe"]
    assert sorted(set(data.labels)) == [0, 1, 2]
    assert data.labels[0] == 1  # circle/0.png: the teacher's index of "circle"
    assert data.picture(0).size == (24, 24)


def test_a_jsonl_table_may_give_class_indices_as_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    write_folder(tmp_path / "photos", per_class=1)
    rows = [{"file": f"photos/{name}/0.png", "label": index} for index, name in enumerate(LABELS)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in reversed(rows)))
    data = load_images(tmp_path / "rows.jsonl", label2id={n: i for i, n in enumerate(LABELS)})
    assert data.labels == [2, 1, 0]


def test_table_of_paths_and_of_bytes(tmp_path):
    root = write_folder(tmp_path / "photos", per_class=2)
    rows = [{"file": f"photos/{name}/0.png", "label": name} for name in LABELS]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = load_images(tmp_path / "rows.jsonl", label2id={n: i for i, n in enumerate(LABELS)})
    assert data.labels == [0, 1, 2] and np.asarray(data.picture(2)).shape == (24, 24, 3)
    import pyarrow as pa
    import pyarrow.parquet as pq

    blobs = [(root / name / "1.png").read_bytes() for name in LABELS]
    pq.write_table(pa.table({"image": blobs, "label": LABELS}), tmp_path / "rows.parquet")
    data = load_images(tmp_path / "rows.parquet", label2id=None)
    assert data.label_names == sorted(LABELS) and len(data) == 3


@pytest.mark.parametrize("case", ["corrupt", "empty class", "no images", "missing path"])
def test_bad_image_data_is_one_line_naming_the_file(tmp_path, case):
    root = write_folder(tmp_path / "photos", per_class=2)
    source = root
    if case == "corrupt":
        (root / "dots" / "broken.png").write_bytes(b"\x89PNG not really")
        expected = "broken.png cannot be read"
    elif case == "empty class":
        (root / "empty").mkdir()
        expected = "class folder"
    elif case == "no images":
        source = tmp_path / "flat"
        source.mkdir()
        expected = "no class folders"
    else:
        source = tmp_path / "rows.csv"
        source.write_text("image,label\nphotos/dots/0.png,dots\nphotos/nowhere.png,dots\n")
        expected = "nowhere.png does not exist"
    with pytest.raises(UserError, match=expected) as error:
        load_images(source, label2id=None)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------- students

@pytest.mark.parametrize("kind", ["vit", "resnet", "convnext"])
def test_cut_students_keep_the_teachers_blocks(kind):
    teacher = tiny(kind)
    student = cut_student(teacher, "1")
    pixels = torch.randn(2, 3, 32, 32)
    assert student(pixel_values=pixels).logits.shape == (2, 3)
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())
    if kind == "vit":  # the kept block is the teacher's own last block
        assert torch.equal(student.vit.layers[0].attention.q_proj.weight, teacher.vit.layers[3].attention.q_proj.weight)
    else:
        assert student.config.depths == [1, 1, 1, 1]


def test_mobilenet_cannot_be_cut_but_can_be_shrunk():
    teacher = tiny("mobilenet")
    with pytest.raises(UserError, match="cannot be cut by layers"):
        cut_student(teacher, "1")
    student = shrunk_image_student(teacher, "width=0.5")
    assert student.config.depth_multiplier == pytest.approx(0.175)


def test_shrunk_vit_gets_a_resized_processor():
    student, student_processor = make_image_student(tiny("vit"), processor(), config_spec="hidden=16,heads=2,image=16,patch=4")
    assert student_processor(images=[Image.new("RGB", (40, 30))], return_tensors="pt")["pixel_values"].shape[-2:] == (16, 16)
    with pytest.raises(UserError, match="not divisible"):
        shrunk_image_student(tiny("vit"), "hidden=18,heads=4")


def test_feature_maps_of_every_family_are_maps():
    pixels = torch.randn(2, 3, 32, 32)
    for kind in ("vit", "resnet", "convnext", "mobilenet"):
        maps = feature_maps(tiny(kind), pixels)["maps"]
        assert maps and all(m.dim() == 4 and m.shape[0] == 2 for m in maps)


def test_a_given_student_must_have_the_teachers_labels(tmp_path):
    other = tiny("resnet")
    other.config.id2label = {0: "a", 1: "b", 2: "c"}
    save(other, tmp_path / "other")
    with pytest.raises(UserError, match="teacher's labels"):
        make_image_student(tiny("vit"), processor(), model=str(tmp_path / "other"))


# ---------------------------------------------------------------------------- distill and export

def test_distill_vit_teacher_into_a_cnn_student_from_the_command_line(tmp_path):
    photos = write_folder(tmp_path / "photos", per_class=8)
    teacher = save(tiny("vit"), tmp_path / "teacher")
    given = save(tiny("resnet"), tmp_path / "given")
    result = CliRunner().invoke(app, [
        "distill", "--teacher", str(teacher), "--data", str(photos), "--student", str(given),
        "--out", str(tmp_path / "student"), "--epochs", "1", "--batch-size", "8", "--hidden-mse-weight", "1",
        "--crop-scale", "0.5", "--flip", "--quiet", "--allow-poor-student"])
    assert result.exit_code == 0, result.output
    assert "teacher: runs every step" in result.output
    record = json.loads((tmp_path / "student" / "distillation.json").read_text())
    assert record["teacher_cache"] is False and record["feature_pairs"]
    assert (tmp_path / "student" / "preprocessor_config.json").is_file()


def test_text_options_are_refused_for_images(tmp_path):
    teacher = save(tiny("resnet"), tmp_path / "teacher")
    result = CliRunner().invoke(app, ["distill", "--teacher", str(teacher), "--data", str(tmp_path),
                                      "--out", str(tmp_path / "s"), "--trim-vocab"])
    assert result.exit_code != 0 and "--trim-vocab is an option of --task text-classification" in result.output


def test_a_text_teacher_is_not_an_image_classifier(tmp_path):
    from edgekd.vision.models import load_image_classifier
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    BertForSequenceClassification(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=32)).save_pretrained(tmp_path / "bert")
    with pytest.raises(UserError, match="not an image classifier"):
        load_image_classifier(tmp_path / "bert")
    assert not (tmp_path / "bert" / "preprocessor_config.json").exists()
    del BertTokenizerFast


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_export_targets_match_pytorch_and_int8_is_static_qdq(tmp_path, kind):
    import onnx

    from edgekd.exporting.stage import export

    student = save(tiny(kind), tmp_path / "student")
    targets = load_targets_for(["onnx-fp32", "onnx-fp16", "onnx-int8", "ort-mobile"], "image-classification")
    artifacts = export(student, targets=targets, out=tmp_path / "out", validation=pictures(),
                       task="image-classification")
    by_target = {a.target: a for a in artifacts}
    assert by_target["onnx-fp32"].parity.max_abs_diff < 1e-4
    assert by_target["onnx-fp16"].parity.max_abs_diff < 1e-2
    assert by_target["onnx-int8"].precision == "int8-static"
    ops = {node.op_type for node in onnx.load(str(by_target["onnx-int8"].model_file)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    manifest = json.loads((tmp_path / "out" / "onnx-int8" / "edgekd.json").read_text())
    assert manifest["task"] == "image-classification"
    assert manifest["inputs"] == {"pixel_values": ["batch", "channels", "height", "width"]}
    assert (tmp_path / "out" / "ort-mobile" / "preprocessor_config.json").is_file()
    for artifact in artifacts:
        assert artifact.accuracy is not None and artifact.accuracy.passed


def test_executorch_int8_for_images_is_static_and_takes_any_batch(tmp_path):
    from edgekd.exporting.stage import export
    from edgekd.sessions import ExecutorchSession

    student = save(tiny("mobilenet"), tmp_path / "student")
    (artifact,) = export(student, targets=load_targets_for(["executorch-int8"], "image-classification"),
                         out=tmp_path / "out", validation=pictures(), task="image-classification")
    manifest = json.loads((tmp_path / "out" / "executorch-int8" / "edgekd.json").read_text())
    assert artifact.precision == "int8-static" and manifest["delegation"]["max_batch"] >= 1
    session = ExecutorchSession(artifact.model_file, ["pixel_values"], max_batch=manifest["delegation"]["max_batch"])
    (logits,) = session.run(["logits"], {"pixel_values": np.random.default_rng(0).standard_normal((40, 3, 32, 32)).astype(np.float32)})
    assert logits.shape == (40, 3)


# ---------------------------------------------------------------------------- bench

def test_top5_accuracy_by_hand():
    from edgekd.metrics import quality, top_k_accuracy

    logits = np.array([[6, 5, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0, 9.0]])
    labels = np.array([4, 0, 3])  # rank 5 (in), rank 7 (out), tied zeros: stable order puts index 3 in the top 5
    assert top_k_accuracy(logits, labels, k=5) == pytest.approx(2 / 3)
    assert quality(logits, labels, teacher_logits=None)["top5_accuracy"] == pytest.approx(2 / 3)
    assert "top5_accuracy" not in quality(logits[:, :5], np.array([4, 0, 3]), teacher_logits=None)


def test_bench_images_each_model_at_its_own_size_with_gates(tmp_path):
    from edgekd.benchmarking.gates import GateLimits
    from edgekd.benchmarking.report import markdown
    from edgekd.benchmarking.classifier import bench
    from edgekd.exporting.stage import export

    teacher = save(tiny("vit"), tmp_path / "teacher")  # 32 x 32 pixels
    tiny("resnet").save_pretrained(tmp_path / "student")
    processor(24).save_pretrained(tmp_path / "student")  # the student looks at 24 x 24
    export(tmp_path / "student", targets=load_targets_for(["onnx-fp32", "onnx-int8", "executorch-int8"],
                                                          "image-classification"),
           out=tmp_path / "out", validation=pictures(), task="image-classification")
    report = bench(teacher=teacher, student=tmp_path / "student", artifacts=tmp_path / "out", data=pictures(),
                   repeats=3, warmup=1, throughput_batch_size=20, measure_memory=False, show_progress=False,
                   cache_folder=tmp_path / "cache", gates=GateLimits(max_size_mb=0.05))
    rows = {row["name"]: row for row in report["rows"]}
    assert report["task"] == "image-classification"
    assert set(rows) == {"teacher", "student", "student/onnx-fp32", "student/onnx-int8", "student/executorch-int8"}
    assert rows["teacher"]["input_size"] == {"channels": 3, "height": 32, "width": 32}
    assert all(rows[name]["input_size"]["height"] == 24 for name in rows if name != "teacher")
    # fp32 ONNX predicts as the PyTorch student does; 3 classes: no top-5
    assert rows["student/onnx-fp32"]["quality"]["accuracy"] == rows["student"]["quality"]["accuracy"]
    assert rows["student/onnx-fp32"]["quality"]["kl_to_teacher"] == pytest.approx(
        rows["student"]["quality"]["kl_to_teacher"], abs=1e-4)
    assert "top5_accuracy" not in rows["student"]["quality"]
    # throughput at batch 20 runs through the .pte in parts of its largest batch
    assert rows["student/executorch-int8"]["throughput"]["examples_per_s"] > 0
    # convolutions are counted: the ONNX graph's operations equal PyTorch's
    assert rows["student/onnx-fp32"]["efficiency"]["operations"] == rows["student"]["efficiency"]["operations"] > 0
    assert rows["student/onnx-int8"]["efficiency"]["int8_operations"] > 0
    size_gates = {g["artifact"]: g for g in report["gates"] if g["gate"] == "size_mb"}
    assert set(size_gates) == {"student/onnx-fp32", "student/onnx-int8", "student/executorch-int8"}
    assert size_gates["student/onnx-fp32"]["passed"] is (rows["student/onnx-fp32"]["size_bytes"] <= 50_000)
    assert "3x24x24" in markdown(report) and "top-5 %" in markdown(report)


def test_bench_images_from_the_command_line(tmp_path):
    from edgekd.exporting.stage import export

    photos = write_folder(tmp_path / "photos", per_class=4)
    teacher = save(tiny("resnet"), tmp_path / "teacher")
    student = save(tiny("mobilenet"), tmp_path / "student")
    export(student, targets=load_targets_for(["onnx-int8"], "image-classification"), out=tmp_path / "out",
           validation=pictures(), task="image-classification")
    common = ["bench", "--teacher", str(teacher), "--student", str(student), "--data", str(photos), "--quiet",
              "--repeats", "3", "--throughput-batch", "0", "--no-memory"]
    refused = CliRunner().invoke(app, common + ["--sequence-length", "64"])
    assert refused.exit_code != 0 and "--sequence-length is an option of --task text-classification" in refused.output
    result = CliRunner().invoke(app, common + ["--artifacts", str(tmp_path / "out"), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["data"]["rows"] == 12 and report["task"] == "image-classification"
    assert (tmp_path / "report" / "report.png").is_file()
    assert "WARNING" not in result.output  # onnxruntime's root-logger advice stays off the terminal
    (tmp_path / "out" / "onnx-int8" / "preprocessor_config.json").unlink()
    broken = CliRunner().invoke(app, common + ["--artifacts", str(tmp_path / "out"), "--out", str(tmp_path / "r2")])
    assert broken.exit_code == 1 and "student/onnx-int8 has no preprocessor_config.json" in broken.output
    assert not (tmp_path / "r2" / "report.json").exists()


def test_a_saved_dataset_with_an_image_feature_and_class_labels(tmp_path):
    import datasets

    rows = pictures(12)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=LABELS)})
    table = datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in rows.images], "label": rows.labels},
                                       features=features)
    datasets.DatasetDict({"train": table}).save_to_disk(str(tmp_path / "saved"))
    loaded = load_images(tmp_path / "saved", label2id={n: i for i, n in enumerate(LABELS)}, default_split="train")
    assert len(loaded) == 12 and loaded.labels == rows.labels and loaded.label_names == LABELS
    assert np.array_equal(np.asarray(loaded.picture(5)), rows.images[5])  # PNG round trip: the same pixels


def test_a_vit_sliced_with_nothing_away_is_the_teacher_and_a_narrower_one_keeps_its_strongest_channels():
    from edgekd.slicing import sliced_student
    from edgekd.pixels import probe_batches

    teacher = tiny("vit")
    probe = probe_batches(pictures(24), processor(), channels=3)
    full = sliced_student(teacher, {"hidden": 32, "heads": 4, "intermediate": 64}, probe)
    with torch.no_grad():
        for batch in probe:
            assert torch.equal(full(**batch).logits, teacher(**batch).logits)
    student, student_processor = make_image_student(teacher, processor(), config_spec="hidden=16,intermediate=32,layers=2",
                                                    probe=probe)
    config = student.config
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size, config.num_hidden_layers) == \
        (16, 2, 32, 2)
    assert type(student) is type(teacher) and student_processor.size == processor().size
    # the kept patch-embedding channels are the teacher's own rows, not random ones
    rows = teacher.vit.embeddings.patch_embeddings.projection.weight.flatten(1)
    kept = student.vit.embeddings.patch_embeddings.projection.weight.flatten(1)
    assert all(any(torch.equal(row, other) for other in rows) for row in kept)


def test_a_vit_given_a_new_patch_size_is_random_and_cnn_widths_are_random():
    from edgekd.vision.models import slices_width

    assert slices_width(tiny("vit"), "hidden=16,layers=2")
    assert not slices_width(tiny("vit"), "hidden=16,patch=4")
    assert not slices_width(tiny("resnet"), "depth=1,width=0.5")


def test_distill_slices_a_vit_student_from_the_command_line(tmp_path):
    photos = write_folder(tmp_path / "photos", per_class=6)
    teacher = save(tiny("vit"), tmp_path / "teacher")
    result = CliRunner().invoke(app, [
        "distill", "--teacher", str(teacher), "--data", str(photos), "--student-config", "hidden=16,layers=2",
        "--out", str(tmp_path / "student"), "--epochs", "1", "--batch-size", "8", "--quiet", "--allow-poor-student"])
    assert result.exit_code == 0, result.output
    assert "random weights" not in result.output  # sliced: the sliced students' learning rate, as for text
    assert "sliced from the teacher, so --lr 0.0003" in result.output
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (16, 2, 2)


def test_an_image_table_stays_in_arrow_and_is_read_a_picture_at_a_time(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from edgekd.vision.data import ImageColumn

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    root = write_folder(tmp_path / "photos", per_class=2)
    blobs = [(root / name / "1.png").read_bytes() for name in LABELS]
    pq.write_table(pa.table({"image": blobs + [b"not a picture"], "label": LABELS + ["dots"]}), tmp_path / "bytes.parquet")
    paths = [f"photos/{name}/{i}.png" for name in LABELS for i in (0, 1)]
    (tmp_path / "paths.csv").write_text("file,label\n" + "".join(f"{p},{p.split('/')[1]}\n" for p in paths))
    data = load_images(tmp_path / "paths.csv", label2id=None)
    assert isinstance(data.images, ImageColumn) and data.labels == [sorted(LABELS).index(n) for n in LABELS for _ in "ab"]
    second = root / LABELS[1] / "1.png"
    assert data.images[3] == second and data.names[3] == str(second)
    picked = data.subset([5, 0])
    assert isinstance(picked.images, ImageColumn) and picked.names[0] == str(root / LABELS[2] / "1.png")
    assert np.array_equal(np.asarray(picked.picture(1)), np.asarray(data.picture(0)))
    with pytest.raises(UserError, match=r"image row 4 of .*bytes.parquet cannot be read"):  # named by its row
        load_images(tmp_path / "bytes.parquet", label2id=None)
