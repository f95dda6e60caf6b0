"""Sessions on exported files, for every stage: onnxruntime (ONNX and .ort), ExecuTorch and LiteRT.

A file a runtime cannot load is one clear error. `GraphSession` passes a graph only the
inputs it has: exporters drop inputs a model ignores (DeBERTa-v2 without token types takes
no token_type_ids), so callers may offer every input the tokenizer makes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgekd.errors import UserError, first_line
from edgekd.progress import quiet_native_output

TEXT_INPUT, PAIR_INPUT = "text", "text_pair"  # the inputs of a model with the tokenizer inside
LITERT_INSTALL = "pip install -c constraints.txt 'edgekd[litert]'"
LITERT_SIGNATURE_PREFIX = "serving_default_"  # the LiteRT converter's prefix on input tensor names


def string_feeds(texts: list[str], pairs: list[str] | None) -> dict[str, np.ndarray]:
    """Feeds of a model with the tokenizer inside: the texts (and second texts of pairs) as strings."""
    feeds = {TEXT_INPUT: np.array(texts, dtype=object)}
    if pairs is not None:
        feeds[PAIR_INPUT] = np.array(pairs, dtype=object)
    return feeds


class GraphSession:
    """An onnxruntime session that takes feeds for more inputs than its graph has."""

    def __init__(self, session) -> None:
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise UserError(f"the exported graph needs inputs {missing} that were not given; "
                            "export the model with its own tokenizer")
        return self.session.run(output_names, {name: feeds[name] for name in self.input_names})

    def get_inputs(self):
        return self.session.get_inputs()

    def get_outputs(self):
        return self.session.get_outputs()


OPTIMIZATION_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                       "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def onnx_session(path: Path, *, threads: int = 1, optimization_level: str = "all",
                 ort_format: bool = False, custom_ops: bool = False):
    """An onnxruntime CPU session; `ort_format` loads a .ort file the way ORT Mobile does;
    `custom_ops` registers ONNX Runtime Extensions' operators (tokenizers in the graph)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if custom_ops:
        register_extensions(options)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                               OPTIMIZATION_LEVELS[optimization_level])
    if ort_format:
        options.add_session_config_entry("session.load_model_format", "ORT")
    return GraphSession(open_session(path, options))


def register_extensions(options) -> None:
    """ONNX Runtime Extensions' custom-op library, on `options`."""
    try:
        from onnxruntime_extensions import get_library_path
    except ImportError as error:
        raise UserError("models with the tokenizer inside need onnxruntime-extensions; install it with "
                        "pip install -c constraints.txt onnxruntime-extensions") from error
    options.register_custom_ops_library(get_library_path())


def open_session(path: Path, options):
    """A CPU InferenceSession of `path`; a file onnxruntime cannot load is one clear error."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
        raise UserError(f"onnxruntime cannot load {path}: {first_line(error)[:200]}; "
                        "the file is corrupt or truncated, export it again") from error


def load_pte_method(path: Path):
    """The `forward` method of a .pte program; a file ExecuTorch cannot load is one clear error."""
    from executorch.runtime import Runtime

    register_quantized_kernels()

    from edgekd.progress import quiet_native_output

    try:
        with quiet_native_output():  # the runtime logs its CPU probing on the first load
            return Runtime.get().load_program(Path(path)).load_method("forward")
    except Exception as error:  # ExecuTorch raises RuntimeError/ValueError with C++ text
        raise UserError(f"ExecuTorch cannot load {path}: {first_line(error)[:200]}; "
                        "the file is corrupt or truncated, export it again") from error


def executorch_threads(threads: int) -> None:
    """Size ExecuTorch's one process-wide thread pool (the last call wins)."""
    try:
        from executorch.extension.pybindings import portable_lib

        with quiet_native_output():  # "[threadpool.cpp:66] Resetting threadpool to 1 threads."
            portable_lib._unsafe_reset_threadpool(threads)
    except (ImportError, AttributeError):
        pass  # older releases: the pool keeps its default size (all cores)


def register_quantized_kernels() -> None:
    """ExecuTorch's quantised kernels (the int8 embedding lookup of executorch-int8 programs):
    the runtime registers them when their library is imported."""
    try:
        import executorch.kernels.quantized  # noqa: F401
    except ImportError:
        pass  # a runtime without them still loads float programs


class ExecutorchSession:
    """An ExecuTorch method behind the `run(["logits"], feeds)` call of an onnxruntime session."""

    def __init__(self, path: Path, input_names: list[str], *, max_batch: int | None = None) -> None:
        self.method = load_pte_method(path)
        self.input_names = input_names
        self.max_batch = max_batch  # a program planned for at most this many rows gets larger batches in parts

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        rows = len(next(iter(feeds.values())))
        step = self.max_batch or rows
        parts = [self._run({name: value[start:start + step] for name, value in feeds.items()})
                 for start in range(0, rows, step)]
        return [np.concatenate(parts) if len(parts) > 1 else parts[0]]

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        outputs = self.method.execute([torch.from_numpy(np.ascontiguousarray(feeds[name]))
                                       for name in self.input_names])
        return np.asarray(outputs[0], dtype=np.float32)


class LiteRTSession:
    """A .tflite on the ai-edge-litert interpreter behind the `run(["logits"], feeds)` call of an
    onnxruntime session: each row runs alone, its token inputs padded to the graph's length."""

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        try:
            with quiet_native_output():
                from ai_edge_litert.interpreter import Interpreter
        except ImportError as error:
            raise UserError("running a .tflite needs the ai-edge-litert interpreter; install it with "
                            f"{LITERT_INSTALL}") from error
        with quiet_native_output():
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
            self.runner = self.interpreter.get_signature_runner()
        self.shapes = {detail["name"].removeprefix(LITERT_SIGNATURE_PREFIX): tuple(int(n) for n in detail["shape"])
                       for detail in self.interpreter.get_input_details()}
        self.dtypes = {detail["name"].removeprefix(LITERT_SIGNATURE_PREFIX): detail["dtype"]
                       for detail in self.interpreter.get_input_details()}
        self.input_names = list(self.shapes)
        # the one token length the graph takes (None for pixels)
        self.sequence_length = self.shapes["input_ids"][1] if "input_ids" in self.shapes else None
        self.first = True

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        rows = len(next(iter(feeds.values())))
        return [np.concatenate([self._row({name: feeds[name][row:row + 1] for name in self.input_names})
                                for row in range(rows)])]

    def _row(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        fixed = {}
        for name, value in feeds.items():
            shape = self.shapes[name]
            if value.ndim == 2 and value.shape[1] != shape[1]:  # tokens: pad (mask 0) or refuse
                if value.shape[1] > shape[1]:
                    raise UserError(f"this .tflite takes {shape[1]} tokens and was given {value.shape[1]}; "
                                    f"export it with --max-length {value.shape[1]} or truncate to {shape[1]}")
                value = np.pad(value, ((0, 0), (0, shape[1] - value.shape[1])))
            fixed[name] = np.ascontiguousarray(value, dtype=self.dtypes[name])
        if self.first:  # the first call prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            with quiet_native_output():
                outputs = self.runner(**fixed)
            self.first = False
        else:
            outputs = self.runner(**fixed)
        return np.asarray(next(iter(outputs.values())), dtype=np.float32).reshape(1, -1)
