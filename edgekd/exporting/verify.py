"""`--verify arm64`: an exported ONNX/.ort model run by the aarch64 onnxruntime under
qemu, on an older and a recent ARM core, and compared with the x86 run of the same file.

Float artifacts must give the x86 logits within their precision's tolerance. Quantised
ones may not: ONNX Runtime picks other int8 kernels on cores with the dot-product and
int8-matmul instructions, as phones do, so each core's logits are held to the target's
accuracy budget against the fp32 student instead, as the x86 export is. Every core's
figures go into the manifest; a core that fails fails the export. Emulated time is not a
phone's time and is not reported.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd import arm64
from edgekd.errors import GateFailed, UserError
from edgekd.exporting.parity import LOGIT_TOLERANCE
from edgekd.exporting.validation import ValidationSet, measure
from edgekd.targets import Budgets

VERIFY_CHOICES = ("arm64",)
RUNNER = Path(arm64.__file__).with_name("arm64_run.py")
SECONDS_PER_CORE = 1800


def check_choices(verify: list[str]) -> None:
    for choice in verify:
        if choice not in VERIFY_CHOICES:
            raise UserError(f"--verify {choice} is not known; choose {', '.join(VERIFY_CHOICES)}")


@dataclass(frozen=True)
class CoreCheck:
    core: str
    runtime: str  # what the emulated Python printed: machine and onnxruntime version
    max_abs_logit_error: float  # against the x86 run of the same file
    agreement: float  # percent of rows with the x86 run's predicted class
    accuracy: dict | None  # int8: the budget check against the fp32 student, as at export
    passed: bool


def verify_arm64(model_path: Path, session, validation: ValidationSet, *, precision: str,
                 budgets: Budgets, ort_format: bool, custom_ops: bool = False, log=print) -> dict:
    """Run `model_path` under arm64 emulation on `validation`'s feeds and compare with
    `session` (the x86 session of the same file); the manifest's `verified.arm64` entry.
    `custom_ops`: the model holds ONNX Runtime Extensions' operators (its feeds may be
    strings). Raises GateFailed when a core misses the check."""
    root = arm64.sysroot(log=log)
    host = np.concatenate([session.run(["logits"], feeds)[0] for feeds in validation.feeds_list])
    tolerance = LOGIT_TOLERANCE.get(precision)
    checks = []
    with tempfile.TemporaryDirectory(prefix="edgekd-arm64-") as scratch:
        feeds_path = Path(scratch) / "feeds.npz"
        np.savez(feeds_path, **{f"{index}/{name}": value.astype(str) if value.dtype == object else value
                                for index, feeds in enumerate(validation.feeds_list) for name, value in feeds.items()})
        for core in arm64.CORES:
            started = time.perf_counter()
            log(f"  arm64 ({core}, emulated): {len(host)} rows of {validation.source}")
            logits, runtime = _run_on_core(root, core, model_path, feeds_path, Path(scratch) / f"{core}.npz",
                                           ort_format=ort_format, custom_ops=custom_ops,
                                           batches=len(validation.feeds_list))
            checks.append(_judge(core, runtime, logits, host, validation, tolerance=tolerance, budgets=budgets))
            log(f"  arm64 ({core}): max |logit - x86| {checks[-1].max_abs_logit_error:.2e}, "
                f"agreement {checks[-1].agreement:.1f}% ({time.perf_counter() - started:.0f} s emulated)")
    record = {"runtime": f"onnxruntime {root.versions['onnxruntime']} aarch64 under qemu-aarch64 "
                         f"{root.versions['qemu']}", "rows": int(len(host)), "source": validation.source,
              "criterion": (f"max |logit - x86| <= {tolerance:g}" if tolerance is not None else
                            f"accuracy within the target's budget ({budgets.max_accuracy_drop:g} points)"),
              "cores": {check.core: {key: value for key, value in check.__dict__.items() if key != "core"}
                        for check in checks},
              "max_abs_logit_error": max(check.max_abs_logit_error for check in checks),
              "agreement": min(check.agreement for check in checks),
              "passed": all(check.passed for check in checks),
              "note": "outputs only: emulated latency is not a phone's and is not measured"}
    failed = [check for check in checks if not check.passed]
    if failed:
        worst = failed[0]
        raise GateFailed(f"{model_path.name} on arm64 ({worst.core}, emulated) differs from x86: max |logit "
                         f"error| {worst.max_abs_logit_error:.2e}, agreement {worst.agreement:.1f}% "
                         f"({record['criterion']}); ship a float target or raise the budget")
    return record


def _run_on_core(root, core: str, model_path: Path, feeds_path: Path, out_path: Path, *, ort_format: bool,
                 custom_ops: bool, batches: int) -> tuple[np.ndarray, str]:
    if custom_ops and "onnxruntime-extensions" not in root.versions:
        raise UserError("the arm64 sysroot has no onnxruntime-extensions for the model with the tokenizer "
                        "inside; install it (pip install -c constraints.txt onnxruntime-extensions) and run again")
    args = [str(RUNNER), str(Path(model_path).resolve()), str(feeds_path), str(out_path)]
    args += ["--ort-format"] * ort_format + ["--custom-ops"] * custom_ops
    done = arm64.run_emulated(root, core, args, timeout=SECONDS_PER_CORE)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise UserError(f"onnxruntime on arm64 ({core}, emulated) cannot run {Path(model_path).name}: "
                        f"{reason[:240]}")
    saved = np.load(out_path, allow_pickle=False)
    return np.concatenate([saved[str(index)] for index in range(batches)]), done.stdout.strip()


def _judge(core: str, runtime: str, logits: np.ndarray, host: np.ndarray, validation: ValidationSet, *,
           tolerance: float | None, budgets: Budgets) -> CoreCheck:
    error = float(np.abs(logits.astype(np.float32) - host.astype(np.float32)).max())
    agreement = float(100 * np.mean(logits.argmax(-1) == host.argmax(-1)))
    if tolerance is not None:
        return CoreCheck(core, runtime, error, agreement, None, passed=error <= tolerance)
    accuracy = measure(logits, validation, budgets=budgets)
    summary = {"accuracy": accuracy.accuracy, "reference_accuracy": accuracy.reference_accuracy,
               "agreement_with_fp32": accuracy.agreement, "drop": accuracy.drop,
               "p_value": accuracy.p_value, "verdict": accuracy.describe()}
    return CoreCheck(core, runtime, error, agreement, summary, passed=accuracy.passed)
