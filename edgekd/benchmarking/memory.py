"""Peak resident memory of loading and running one model, in a fresh process of its own.

A separate process per model, because a process's peak resident set only grows: measured
in the bench process, the teacher loaded first would set the peak for every model after
it. The child imports only the runtime the model needs (onnxruntime alone for ONNX and
ORT files, torch for PyTorch and ExecuTorch, llama.cpp for GGUF), loads the model, runs it on the bench's
latency inputs, and reports:

    runtime_rss_mb  resident memory after importing the runtime, before loading the model
    peak_rss_mb     peak resident memory of the whole process (what a device must hold)
    model_rss_mb    peak - runtime: what loading and running this model added

Run as `python -m edgekd.benchmarking.memory SPEC.json`; this module imports nothing heavy at
the top so that the child's baseline is the runtime's, not edgekd's. A child dies with the
bench that started it (even one killed by SIGKILL), and the next bench removes the scratch
folder (`edgekd-memory-PID-*` in the temporary folder) a killed bench left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SCRATCH_PREFIX = "edgekd-memory-"
RUNS_IN_CHILD = 3  # forward passes after loading: the first allocates the work buffers
TIMEOUT_SECONDS = 600


class MemoryProbe:
    """A child process measuring one model; start several, then collect each `result()`.

    Children may run side by side (each one's peak is its own) and beside the accuracy
    pass, but must be finished before latency is timed, so `result()` waits.
    """

    def __init__(self, *, model_format: str, source: Path | str, input_names: list[str],
                 feeds: dict[str, np.ndarray], threads: int):
        sweep_stale_scratch()
        self._scratch = tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")
        inputs_path = Path(self._scratch.name) / "inputs.npz"
        np.savez(inputs_path, **{name: feeds[name] for name in input_names})
        spec_path = Path(self._scratch.name) / "spec.json"
        spec_path.write_text(json.dumps({"format": model_format, "source": str(source),
                                         "inputs": str(inputs_path), "input_names": input_names,
                                         "threads": threads, "parent": os.getpid()}))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "edgekd.benchmarking.memory", str(spec_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})

    def result(self) -> dict:
        """The child's measurement, or {"error": ...} naming why there is none."""
        try:
            stdout, stderr = self._process.communicate(timeout=TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.communicate()
            return {"error": f"the memory probe took over {TIMEOUT_SECONDS} s and was stopped"}
        finally:
            self._scratch.cleanup()
        lines = stdout.strip().splitlines()
        if self._process.returncode != 0 or not lines:
            last = (stderr.strip().splitlines() or ["no output"])[-1]
            return {"error": f"the memory probe failed: {last[:200]}"}
        return json.loads(lines[-1])

    def stop(self) -> None:
        """End the child early (the bench failed or was interrupted)."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.communicate()
        self._scratch.cleanup()


def meanwhile(probes: dict[str, MemoryProbe], work):
    """`work()` while each model's probe measures its memory in a child process of its own; its
    result and every probe's, the probes stopped whatever happens (every task's bench)."""
    try:
        result = work()
        return result, {name: probe.result() for name, probe in probes.items()}
    finally:
        for probe in probes.values():
            probe.stop()


def measure_memory(*, model_format: str, source: Path | str, input_names: list[str],
                   feeds: dict[str, np.ndarray], threads: int) -> dict:
    """Peak resident memory of a child process that loads `source` and runs it on `feeds`."""
    return MemoryProbe(model_format=model_format, source=source, input_names=input_names,
                       feeds=feeds, threads=threads).result()


def sweep_stale_scratch() -> None:
    """Remove the scratch folders of benches that are no longer running (killed ones)."""
    from edgekd.errors import process_alive

    for leftover in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        pid = leftover.name[len(SCRATCH_PREFIX):].partition("-")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this child when the bench that started it dies, then make sure it
    has not died already (elsewhere a killed bench's child ends after its three runs)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        sys.exit("the bench that started this memory probe is gone")


def resident_mb() -> tuple[float, float]:
    """(current, peak) resident set of this process in MB, from /proc (Linux) or rusage."""
    try:
        status = Path("/proc/self/status").read_text().splitlines()
        fields = {line.split(":")[0]: line.split(":")[1] for line in status if ":" in line}
        return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)
    except (OSError, KeyError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_mb = peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024  # bytes on macOS
        return peak_mb, peak_mb


def _child(spec_path: Path) -> dict:
    spec = json.loads(Path(spec_path).read_text())
    _die_with_parent(spec["parent"])
    with np.load(spec["inputs"], allow_pickle=False) as archive:
        feeds = {name: archive[name] for name in spec["input_names"]}
    run = CHILD_LOADERS[spec["format"]](spec, feeds)  # imports the runtime, returns a loader
    runtime_rss, _ = resident_mb()
    forward = run()
    for _ in range(RUNS_IN_CHILD):
        forward()
    _, peak_rss = resident_mb()
    return {"runtime_rss_mb": runtime_rss, "peak_rss_mb": peak_rss,
            "model_rss_mb": peak_rss - runtime_rss}


def _pytorch(spec: dict, feeds: dict):
    import torch
    import transformers

    torch.set_num_threads(spec["threads"])
    from edgekd.tasks import TASKS, task_of_config

    config = transformers.AutoConfig.from_pretrained(spec["source"])
    auto = TASKS[task_of_config(config.to_dict()) or "text-classification"].auto_class
    # Import the model's code now, so the baseline holds the whole runtime, not the weights.
    getattr(transformers, auto)._model_mapping[type(config)]

    def load():
        model = getattr(transformers, auto).from_pretrained(spec["source"], attn_implementation="eager").eval()
        tensors = {name: torch.from_numpy(value) for name, value in feeds.items()}

        def forward():
            with torch.inference_mode():
                model(**tensors)
        return forward
    return load


def _onnxruntime(spec: dict, feeds: dict):
    import onnxruntime as ort

    def load():
        options = ort.SessionOptions()
        options.intra_op_num_threads = spec["threads"]
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if spec["format"] == "ort":
            options.add_session_config_entry("session.load_model_format", "ORT")
            options.add_session_config_entry("session.use_ort_model_bytes_directly", "1")
        session = ort.InferenceSession(spec["source"], options, providers=["CPUExecutionProvider"])
        # a causal LM's key/value inputs the feeds leave out: an empty cache (batch, kv_heads, 0, head_dim)
        empty = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=np.float32)
                 for i in session.get_inputs() if i.name not in feeds}
        return lambda: session.run(None, {**feeds, **empty})
    return load


def _executorch(spec: dict, feeds: dict):
    import torch
    from executorch.runtime import Runtime

    try:
        import executorch.kernels.quantized  # noqa: F401 - as edgekd.sessions.register_quantized_kernels
    except ImportError:
        pass
    runtime = Runtime.get()
    try:
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(spec["threads"])
    except (ImportError, AttributeError):
        pass  # older releases: the pool keeps its default size

    def load():
        method = runtime.load_program(Path(spec["source"])).load_method("forward")
        inputs = [torch.from_numpy(feeds[name]) for name in spec["input_names"]]
        return lambda: method.execute(inputs)
    return load


def _llama_cpp(spec: dict, feeds: dict):
    from llama_cpp import Llama

    def load():
        ids = [int(token) for token in feeds["input_ids"][0]]
        model = Llama(model_path=spec["source"], n_ctx=max(len(ids), 8), n_threads=spec["threads"],
                      n_threads_batch=spec["threads"], verbose=False)

        def forward():
            model.reset()
            model.eval(ids)
        return forward
    return load


def _litert(spec: dict, feeds: dict):
    from edgekd.sessions import LiteRTSession

    def load():
        session = LiteRTSession(Path(spec["source"]), threads=spec["threads"])
        chosen = {name: feeds[name] for name in spec["input_names"]}
        return lambda: session.run(None, chosen)
    return load


CHILD_LOADERS = {"pytorch": _pytorch, "onnx": _onnxruntime, "ort": _onnxruntime,
                 "pte": _executorch, "gguf": _llama_cpp, "tflite": _litert}


if __name__ == "__main__":
    print(json.dumps(_child(Path(sys.argv[1]))))
