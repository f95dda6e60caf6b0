"""The machine a report was measured on: int8 speed depends on the CPU's instruction sets."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

# CPU flags that decide how fast fp32 and int8 matrix multiplies run, as /proc/cpuinfo
# spells them (x86 "flags", ARM "Features"). asimddp is the ARM dot-product extension.
INSTRUCTION_FLAGS = ("fma", "avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8",
                     "asimd", "asimddp", "i8mm", "sve")
VERSIONED_PACKAGES = ("torch", "onnxruntime", "onnx", "transformers", "numpy", "executorch")


def machine_info() -> dict:
    """CPU model, instruction flags, cores, load and library versions, for report.json."""
    cpu_model, flags = _cpu_model_and_flags()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"cpu": cpu_model, "flags": flags, "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "machine": platform.machine(), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(),
            # The 1-minute load average when the bench started: above the core count,
            # other work shared the CPUs and latencies carry its noise (see `busy`).
            "load_average_1m": round(load[0], 2),
            **{package: _version(package) for package in VERSIONED_PACKAGES}}


def _cpu_model_and_flags() -> tuple[str, list[str]]:
    model = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return model, []
    for line in lines:
        if line.startswith(("model name", "Model", "Hardware")):
            model = line.split(":", 1)[1].strip()
            break
    flags_line = next((line for line in lines if line.startswith(("flags", "Features"))), "")
    present = set(flags_line.split(":", 1)[-1].split())
    return model, [flag for flag in INSTRUCTION_FLAGS if flag in present]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def busy(machine: dict) -> bool:
    """True when more work than cores was running as the bench started: a shared machine.

    The bench's own loading adds about 1 to the load, so only a load above the number of
    usable cores says that something else competed for them.
    """
    return machine["load_average_1m"] > (machine.get("usable_cores") or machine.get("cores") or 1)


def measurement_warnings(rows: list[dict], machine: dict) -> list[str]:
    """What every task's report warns of: peak memory a probe could not measure, a busy machine."""
    warnings = [f"{row['name']}: peak memory not measured ({row['memory']['error']})"
                for row in rows if row.get("memory") and "error" in row["memory"]]
    if busy(machine):
        warnings.append(f"the machine was busy (load {machine['load_average_1m']} on "
                        f"{machine['usable_cores']} cores): compare the ratios, not the absolute times")
    return warnings
