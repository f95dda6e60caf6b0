"""--verify arm64: the sysroot's package resolution and checks, the verdict per core, and
(slow) a real export run under qemu-aarch64 with the aarch64 onnxruntime."""

import json
import platform
import shutil

import numpy as np
import pytest

from edgekd import arm64
from edgekd.errors import UserError
from edgekd.exporting.validation import ValidationSet
from edgekd.exporting.verify import _judge, check_choices
from edgekd.targets import Budgets

PACKAGES = """Package: python3.11-minimal
Version: 3.11.2-6
Depends: libpython3.11-minimal (= 3.11.2-6), libexpat1 (>= 2.1~beta3), zlib1g (>= 1:1.2.0)
Pre-Depends: libc6 (>= 2.35)
Filename: pool/main/p/python3.11/python3.11-minimal_3.11.2-6_arm64.deb
SHA256: 00

Package: libpython3.11-minimal
Depends: libc6 (>= 2.34), media-types | mime-support
Description: a long
 description over two lines

Package: libexpat1
Depends: libc6:any

Package: zlib1g
Depends: libc6

Package: libc6
Depends: libgcc-s1

Package: libgcc-s1
"""


def test_the_package_closure_follows_depends_and_pre_depends_and_skips_virtual_ones():
    index = arm64.parse_packages(PACKAGES)
    assert index["libpython3.11-minimal"]["Description"] == "a long\ndescription over two lines"
    names = [p["Package"] for p in arm64._closure(index, ["python3.11-minimal"], follow=True)]
    assert names == sorted(["python3.11-minimal", "libpython3.11-minimal", "libexpat1", "zlib1g", "libc6",
                            "libgcc-s1"])  # media-types | mime-support: neither is in the index
    with pytest.raises(UserError, match="no package qemu-user"):
        arm64._closure(index, ["qemu-user"], follow=False)


def test_the_release_file_gives_the_index_checksum_or_a_clear_error():
    release = "Origin: Debian\nMD5Sum:\n 11 5 main/binary-arm64/Packages.xz\nSHA256:\n ab 5 main/binary-arm64/Packages.xz\n"
    assert arm64._release_sha256(release, "main/binary-arm64/Packages.xz") == "ab"
    with pytest.raises(UserError, match="does not list main/binary-amd64/Packages.xz"):
        arm64._release_sha256(release, "main/binary-amd64/Packages.xz")


def test_a_sysroot_that_changed_is_not_trusted(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "lib.so").write_bytes(b"x")
    (tmp_path / arm64.STAMP).write_text(json.dumps({"versions": {}, "digest": arm64._tree_digest(tmp_path)}))
    assert arm64._verified(tmp_path) is not None
    (tmp_path / "root" / "lib.so").write_bytes(b"y")
    assert arm64._verified(tmp_path) is None


def _rows(logits):
    return ValidationSet(source="rows", feeds_list=[], labels=np.array([0, 1, 0, 1]), reference_logits=logits)


def test_float_artifacts_must_match_x86_and_int8_ones_their_accuracy_budget():
    host = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 0.5], [0.2, 1.0]], dtype=np.float32)
    near, off = host + 5e-5, host.copy()
    off[2] = [0.5, 1.0]  # one prediction flips
    assert _judge("a72", "aarch64", near, host, _rows(host), tolerance=1e-4, budgets=Budgets()).passed
    assert not _judge("a72", "aarch64", host + 1e-3, host, _rows(host), tolerance=1e-4, budgets=Budgets()).passed
    flipped = _judge("v1", "aarch64", off, host, _rows(host), tolerance=None,
                     budgets=Budgets(max_accuracy_drop=1.0, drop_significance=1.0))
    assert not flipped.passed and flipped.agreement == 75.0 and flipped.accuracy["drop"] == 25.0
    assert _judge("v1", "aarch64", near, host, _rows(host), tolerance=None, budgets=Budgets()).passed


def test_unknown_verify_choices_are_refused():
    with pytest.raises(UserError, match="--verify riscv is not known; choose arm64"):
        check_choices(["riscv"])


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64" or not shutil.which("dpkg-deb") or not shutil.which("gpgv"),
                    reason="arm64 emulation is set up on x86_64 Debian")
def test_export_verify_arm64_runs_each_artifact_on_two_emulated_cores(student_dir, test_file, tmp_path):
    from edgekd.data import Columns, load_file
    from edgekd.exporting.stage import export
    from edgekd.models import load_classifier
    from edgekd.targets import load_target

    model, _ = load_classifier(student_dir)
    data = load_file(test_file, columns=Columns(), label2id=model.config.label2id)
    artifacts = export(student_dir, targets=[load_target("onnx-fp32"), load_target("phone-arm64")],
                       out=tmp_path / "out", validation=data, verify=("arm64",))
    for artifact in artifacts:
        verified = json.loads((artifact.folder / "edgekd.json").read_text())["verified"]["arm64"]
        assert verified["passed"] and set(verified["cores"]) == set(arm64.CORES)
        assert verified["rows"] == len(data)
        for core in verified["cores"].values():
            assert core["runtime"].startswith("aarch64 ")  # the emulated Python really ran aarch64
        if artifact.precision == "fp32":
            assert verified["max_abs_logit_error"] <= 1e-4
        else:
            assert all(core["accuracy"]["drop"] <= 1.0 for core in verified["cores"].values())


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64" or not shutil.which("dpkg-deb") or not shutil.which("gpgv"),
                    reason="arm64 emulation is set up on x86_64 Debian")
def test_the_model_with_the_tokenizer_inside_is_verified_on_arm64_with_string_feeds(student_dir, test_file,
                                                                                    tmp_path):
    """The tokenizer operators' aarch64 build, in the sysroot, on the validation text as strings."""
    pytest.importorskip("onnxruntime_extensions")
    from edgekd.data import Columns, load_file
    from edgekd.exporting.stage import export
    from edgekd.models import load_classifier
    from edgekd.targets import load_target

    model, _ = load_classifier(student_dir)
    data = load_file(test_file, columns=Columns(), label2id=model.config.label2id)
    (artifact,) = export(student_dir, targets=[load_target("ort-mobile")], out=tmp_path / "out", validation=data,
                         verify=("arm64",), with_tokenizer=True)
    entry = json.loads((artifact.folder / "edgekd.json").read_text())
    verified = entry["with_tokenizer"]["verified"]["arm64"]
    assert verified["passed"] and verified["rows"] == len(data) and set(verified["cores"]) == set(arm64.CORES)
    assert verified["agreement"] == 100.0  # the strings tokenized on arm64 as on x86
    assert entry["verified"]["arm64"]["passed"]  # and the plain model beside it


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64" or not shutil.which("dpkg-deb") or not shutil.which("gpgv"),
                    reason="arm64 emulation is set up on x86_64 Debian")
def test_an_image_classifiers_static_int8_export_is_verified_on_arm64(tmp_path):
    from edgekd.exporting.stage import export
    from edgekd.targets import load_targets_for
    from test_vision import pictures, save, tiny

    student = save(tiny("resnet"), tmp_path / "student")
    (artifact,) = export(student, targets=load_targets_for(["onnx-int8"], "image-classification"),
                         out=tmp_path / "out", validation=pictures(), task="image-classification", verify=("arm64",))
    verified = json.loads((artifact.folder / "edgekd.json").read_text())["verified"]["arm64"]
    assert artifact.precision == "int8-static" and verified["passed"] and verified["rows"] == 48
    assert set(verified["cores"]) == set(arm64.CORES)
