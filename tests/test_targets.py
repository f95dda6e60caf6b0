import dataclasses

import pytest
from typer.testing import CliRunner

from edgekd.errors import UserError
from edgekd.targets import Quantization, Target, known_targets, load_target

SHIPPED = ["onnx-fp32", "onnx-fp16", "onnx-int8", "onnx-int8-static", "ort-mobile", "executorch",
           "executorch-int8", "phone-arm64-executorch",
           "laptop-x86", "laptop-x86-vnni", "phone-arm64", "raspberry-pi"]


def test_every_required_target_ships():
    assert set(SHIPPED) <= set(known_targets())


@pytest.mark.parametrize("name", known_targets())
def test_each_shipped_target_loads_into_a_checked_dataclass(name):
    target = load_target(name)
    assert target.name == name and target.description and "\n" not in target.description
    # round trip through the dataclass: every field passes its range check again
    rebuilt = Target(**{f.name: getattr(target, f.name) for f in dataclasses.fields(Target)})
    assert rebuilt == target


def test_device_profiles_start_from_a_base_and_override_by_section():
    base, laptop = load_target("onnx-int8"), load_target("laptop-x86")
    assert (laptop.format, laptop.precision) == (base.format, base.precision)
    assert laptop.quantization.op_types == base.quantization.op_types  # inherited
    assert laptop.quantization.reduce_range and not load_target("laptop-x86-vnni").quantization.reduce_range
    assert laptop.runtime.threads == 4 and base.runtime.threads == 1
    phone = load_target("phone-arm64")
    assert phone.format == "ort" and phone.budgets.max_size_mb is not None


def test_static_int8_target_calibrates_on_matmul_and_gemm_only():
    static = load_target("onnx-int8-static")
    assert static.precision == "int8-static"
    assert set(static.quantization.op_types) == {"MatMul", "Gemm"}
    assert static.quantization.calibration_method in ("minmax", "entropy", "percentile")


@pytest.mark.parametrize("text, message", [
    ("description: x\nformat: onnx\nprecision: fp32\nthreads: 4\n", r"mine.yaml: unknown key 'threads'"),
    ("description: x\nformat: onnx\nprecision: fp32\nruntime:\n  thread: 4\n",
     r"mine.yaml: unknown key 'runtime.thread'; known keys under 'runtime'"),
    ("format: [onnx\n", "mine.yaml is not valid YAML"),
    ("- a\n- b\n", "must be a mapping"),
    ("format: onnx\nprecision: fp32\n", "mine.yaml: missing key 'description'"),
    ("description: x\nformat: coreml\nprecision: fp32\n", "format 'coreml' is not one of"),
    ("description: x\nformat: tflite\nprecision: int4\n", "format tflite serves classifiers at precisions"),
    ("description: x\nformat: tflite\nprecision: fp32\ntasks: [causal-lm]\n",
     "format tflite serves classifiers at precisions"),
    ("description: x\nformat: onnx\nprecision: int2\n", "precision 'int2' is not one of"),
    ("description: x\nformat: onnx\nprecision: fp32\ntasks: [translation]\n", "tasks must list one or more of"),
    ("description: x\nformat: onnx\nprecision: fp32\nruntime:\n  threads: 0\n", "threads must be 1 to 256"),
    ("description: x\nformat: onnx\nprecision: int8-static\nquantization:\n  calibration_method: kl\n",
     "calibration_method must be one of"),
    ("description: x\nformat: pte\nprecision: int4\n", "format pte supports precisions"),
    ("base: tpu-9000\ndescription: x\n", "unknown target 'tpu-9000'"),
])
def test_bad_target_files_name_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_target(str(path))


def test_a_new_device_profile_is_one_yaml_file(tmp_path):
    path = tmp_path / "my-board.yaml"
    path.write_text("base: onnx-int8-static\ndescription: my board\n"
                    "quantization:\n  calibration_method: percentile\nruntime:\n  threads: 3\n")
    target = load_target(str(path))
    assert target.name == "my-board" and target.precision == "int8-static"
    assert target.quantization.calibration_method == "percentile"
    assert target.quantization.per_channel == load_target("onnx-int8-static").quantization.per_channel
    assert target.runtime.threads == 3


def test_base_loop_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text(f"base: {tmp_path / 'b.yaml'}\n")
    (tmp_path / "b.yaml").write_text(f"base: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(UserError, match="loops back"):
        load_target(str(tmp_path / "a.yaml"))


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown target 'tpu'.*onnx-fp32.*raspberry-pi"):
        load_target("tpu")


def test_quantization_range_checks():
    with pytest.raises(ValueError, match="calibration_samples"):
        Quantization(calibration_samples=0)


def test_targets_command_lists_every_target_with_its_description():
    from edgekd.cli import app

    result = CliRunner().invoke(app, ["targets"])
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.output.strip().splitlines() if line.startswith("  ")]
    listed = [line.split()[0] for line in lines]
    # every target once under each task it serves, with its description
    assert sorted(listed) == sorted(name for name in known_targets() for _ in load_target(name).tasks)
    for line in lines:
        assert load_target(line.split()[0]).description in line
