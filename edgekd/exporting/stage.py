"""The export stage for classifiers, of text and of images: a student folder in, one checked
artifact folder per target out (written the way every task writes them: edgekd/exporting/artifact.py).
What differs between text and pixels (the graph's inputs, random and real batches) comes
from edgekd/exporting/inputs.py; everything below serves both.

Every artifact is loaded back in its own runtime and checked against the PyTorch
student: logits within the precision's tolerance, and with validation data the accuracy
budget (int8 keeps its most sensitive nodes float until it holds); a failed check raises
and leaves no folder behind. The manifest adds the accuracy and the nodes kept in float.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from edgekd.data import TextDataset
from edgekd.errors import GateFailed, UserError
from edgekd.exporting.artifact import (Artifact, Built, check_request, refuse_programs_with_strings, ship_onnx,
                                       write_target)
from edgekd.exporting.litert import TFLITE_FILE, export_tflite
from edgekd.exporting.mobile import PTE_FILE, export_pte
from edgekd.exporting.inputs import PARITY_SHAPES, PixelInputs, TokenInputs, sample_rows
from edgekd.exporting.onnx import check_onnx_file, export_graph, input_names_of, opset_of
from edgekd.exporting.parity import LOGIT_TOLERANCE, Parity, check_parity
from edgekd.exporting.quantize import (build_precision, calibrate, quantizable_nodes, quantize_dynamic,
                                    quantize_static)
from edgekd.exporting.sensitivity import Int8Search, quantize_within_budget
from edgekd.exporting.validation import Accuracy, ValidationSet, measure, reference_set, session_logits
from edgekd.models import load_model, model_inputs
from edgekd.sessions import ExecutorchSession, LiteRTSession, onnx_session
from edgekd.targets import Target
from edgekd.tasks import TASKS

MODEL_FILE = "model.onnx"
CALIBRATION_BATCH_SIZE = 8


@dataclass
class _Context:
    """What every target of one export shares: the student, its data, the fp32 ONNX files."""

    student_dir: Path
    model: torch.nn.Module
    tokenizer: object  # or the image processor
    inputs: TokenInputs | PixelInputs
    scratch: Path
    validation: ValidationSet | None
    calibration: list[dict[str, np.ndarray]]
    calibration_source: str
    task: str = "text-classification"
    verify: tuple[str, ...] = ()
    with_tokenizer: bool = False
    max_length: int = 128
    validation_texts: TextDataset | None = None
    front: object = None  # the tokenizer graph, built on first use (tokenizer_graph.TextFront)
    fp32_files: dict[tuple[str, int], Path] = field(default_factory=dict)
    # int8 models already built in this export, by everything that decides their bytes:
    # ort-mobile reuses onnx-int8's model (and its accuracy search) instead of redoing it.
    int8_files: dict[tuple, tuple[Path, dict]] = field(default_factory=dict)


def export(student_dir: Path, *, targets: list[Target], out: Path, overwrite: bool = False,
           validation=None, validation_source: str = "validation data",
           calibration=None, calibration_source: str = "calibration data",
           max_length: int = 128, exporter: str | None = None,
           verify: tuple[str, ...] = (), with_tokenizer: bool = False,
           task: str = "text-classification") -> list[Artifact]:
    """Export the student in `student_dir` (a text or image classifier, as `task` says) for
    every target into `out/<target>/`; `validation` and `calibration` are TextDatasets or
    ImageDatasets (edgekd/vision/data.py).

    `validation` (labelled or not) holds every artifact to its accuracy budget; without
    it, artifacts are checked on random batches only and the manifest says so.
    `calibration` feeds static int8 (default: a sample of `validation`). `exporter`
    overrides the targets' exporter (torchscript, dynamo or optimum). `verify` ("arm64")
    also runs every ONNX/.ort artifact under arm64 emulation (edgekd/exporting/verify.py).
    `with_tokenizer` also writes, beside each ONNX/.ort model, one that takes raw strings
    (edgekd/exporting/tokenizer_graph.py).
    """
    student_dir, out = Path(student_dir), Path(out)
    check_request(student_dir, targets, out, overwrite=overwrite, task=task)
    if with_tokenizer and TASKS[task].inputs != "tokens":
        raise UserError("--with-tokenizer puts a text classifier's tokenizer inside its graph; an image "
                        "classifier's graph takes pixels: drop --with-tokenizer")
    if with_tokenizer:
        refuse_programs_with_strings(targets)
    if exporter is not None:
        targets = [replace(target, exporter=exporter) for target in targets]
    model, tokenizer = load_model(student_dir, task=task, role="student")
    if with_tokenizer:  # a tokenizer the operators cannot reproduce is refused before any work
        from edgekd.exporting.tokenizer_graph import wordpiece_settings

        wordpiece_settings(tokenizer)
    inputs = (PixelInputs.of(model, tokenizer) if TASKS[task].inputs == "pixels"
              else TokenInputs(tokenizer, input_names_of(model, tokenizer), max_length))
    with tempfile.TemporaryDirectory(prefix="edgekd-export-") as scratch:
        context = _Context(
            student_dir=student_dir, model=model, tokenizer=tokenizer, inputs=inputs, task=task,
            scratch=Path(scratch), verify=tuple(verify), with_tokenizer=with_tokenizer,
            max_length=max_length, validation_texts=validation,
            validation=None if validation is None else reference_set(
                validation, model=model, inputs=inputs, source=validation_source),
            **_calibration_feeds(calibration if calibration is not None else validation, inputs, targets,
                                 source=calibration_source if calibration is not None
                                 else validation_source))
        return [_export_one(target, context, out, overwrite=overwrite) for target in targets]


def _calibration_feeds(dataset, inputs: TokenInputs | PixelInputs, targets: list[Target], *, source: str) -> dict:
    """Batches for static int8 calibration: sampled rows of the data, else random batches."""
    samples = max((t.quantization.calibration_samples for t in targets
                   if t.precision == "int8-static"), default=0)
    if samples == 0:
        return {"calibration": [], "calibration_source": "none (no static int8 target)"}
    if dataset is None:
        what = "token batches" if inputs.kind == "tokens" else "pixel batches"
        return {"calibration": inputs.random_calibration(max(1, samples // CALIBRATION_BATCH_SIZE),
                                                         CALIBRATION_BATCH_SIZE),
                "calibration_source": f"random {what} (no data given: pass --data or "
                                      "--calibration-data for ranges that fit real inputs)"}
    rows, count = sample_rows(dataset, samples)
    return {"calibration": inputs.feeds(rows, batch_size=CALIBRATION_BATCH_SIZE),
            "calibration_source": f"{source} ({count} rows)"}


# ------------------------------------------------------------------------------ one target

def _export_one(target: Target, context: _Context, out: Path, *, overwrite: bool) -> Artifact:
    def build(staging: Path) -> Built:
        details: dict = {}
        weight_files: tuple[str, ...] = ()
        if target.format == "pte":
            model_path = staging / PTE_FILE
            details["delegation"] = export_pte(
                context.model, context.inputs, model_path,
                backend=target.runtime.executorch_backend,
                max_sequence=int(getattr(context.model.config, "max_position_embeddings", 512)),
                precision=target.precision, per_channel=target.quantization.per_channel,
                calibration=context.calibration if target.precision == "int8-static" else _pte_samples(context))
            if target.precision == "int8-dynamic":
                details["quantization"] = {"method": "PT2E XNNPACKQuantizer, dynamic activations",
                                           "per_channel": target.quantization.per_channel,
                                           "layers": "Linear and convolution",
                                           "embeddings": "int8 rows, one scale each (embedding_byte)",
                                           "kernels": "link ExecuTorch's quantized kernels (quantized_ops_lib) "
                                                      "beside XNNPACK: the embedding lookup runs there"}
            elif target.precision == "int8-static":
                details["quantization"] = {"method": "PT2E XNNPACKQuantizer, static int8 activations",
                                           "per_channel": target.quantization.per_channel,
                                           "layers": "every operator XNNPACK quantises (convolution, Linear, ...)",
                                           "calibration": {"source": context.calibration_source,
                                                           "batches": len(context.calibration)}}
            session = ExecutorchSession(model_path, context.inputs.names,
                                        max_batch=details["delegation"].get("max_batch"))
        elif target.format == "tflite":
            model_path = staging / TFLITE_FILE
            details.update(export_tflite(context.model, context.inputs, model_path, precision=target.precision,
                                         sequence_length=context.max_length))
            session = LiteRTSession(model_path, threads=target.runtime.threads)
        else:
            onnx_path = (staging if target.format == "onnx" else context.scratch / target.name) / MODEL_FILE
            onnx_path.parent.mkdir(parents=True, exist_ok=True)
            details.update(_build_onnx(target, context, onnx_path))
            model_path, weight_files = ship_onnx(target, onnx_path, staging, details)
            session = (onnx_session(model_path, optimization_level=target.graph_optimization_level)
                       if target.format == "onnx" else onnx_session(model_path, ort_format=True))
            if context.with_tokenizer:
                details["with_tokenizer"] = _with_tokenizer(target, context, onnx_path, session, staging)
        parity = _checked_parity(target, session, context)
        accuracy = _checked_accuracy(target, session, context)
        if "arm64" in context.verify:
            details["verified"] = {"arm64": _verified_on_arm64(target, model_path, session, context)}
        # the graph's own inputs: an exporter drops those the model ignores
        inputs = getattr(session, "input_names", context.inputs.names)
        axes = {name: details["input_shapes"][name] if target.format == "tflite" else context.inputs.axes()
                for name in inputs}  # a .tflite takes one fixed shape
        return Built(model_file=model_path.name, inputs=axes,
                     outputs={"logits": ["batch", "num_labels"]}, parity=asdict(parity),
                     details=_manifest_details(target, accuracy, details), weight_files=weight_files,
                     checks={"parity": parity, "accuracy": accuracy,
                             "nodes_kept_float": tuple(details.get("nodes_kept_float", ()))})

    return write_target(target, out, task=context.task, student_dir=context.student_dir, model=context.model,
                        tokenizer=context.tokenizer, overwrite=overwrite, build=build)


def _pte_samples(context: _Context) -> list[dict[str, np.ndarray]]:
    """Feeds the PT2E observers run once: validation batches of several lengths, else random ones."""
    if context.validation is not None:
        return context.validation.feeds_list[:4]
    return context.inputs.random_feeds()


def _fp32_onnx(target: Target, context: _Context) -> Path:
    """The fp32 export for this target's exporter and opset, made once per export."""
    key = (target.exporter, target.opset)
    if key not in context.fp32_files:
        path = context.scratch / f"fp32-{target.exporter}-{target.opset}.onnx"
        if target.exporter == "optimum":
            from edgekd.exporting.optimum import export_with_optimum

            names = export_with_optimum(context.student_dir, path, opset=target.opset)
        else:
            names = export_graph(context.model, context.inputs, path, opset=target.opset, exporter=target.exporter)
        if names != context.inputs.names:
            raise UserError(f"the {target.exporter} exporter made a graph with inputs {names}, "
                            f"but the student takes {context.inputs.names}; use another exporter")
        check_onnx_file(path)
        context.fp32_files[key] = path
    return context.fp32_files[key]


def _build_onnx(target: Target, context: _Context, destination: Path) -> dict:
    """Write the target's precision of the ONNX model to `destination`; returns manifest details."""
    source = _fp32_onnx(target, context)
    searched = build_precision(target.precision, source, destination,
                               int8=lambda fp32, path: _build_int8(target, context, fp32, path))
    return {"opset": opset_of(source), **(searched or {})}


def _build_int8(target: Target, context: _Context, source: Path, destination: Path) -> dict:
    """An int8 model within the budget, or the copy of one this export already built."""
    key = (source, target.precision, target.quantization, target.budgets.max_accuracy_drop)
    if key not in context.int8_files:
        built = context.scratch / f"int8-{len(context.int8_files)}.onnx"
        context.int8_files[key] = (built, _quantize_int8(target, context, source, built))
    built, details = context.int8_files[key]
    shutil.copyfile(built, destination)
    return dict(details)


def _quantize_int8(target: Target, context: _Context, source: Path, destination: Path) -> dict:
    options = target.quantization
    preset = list(options.nodes_kept_float)
    details: dict = {"quantization": asdict(options)}
    if target.precision == "int8-static":
        cache = context.scratch / f"{target.name}.calibration.json"
        calibrate(source, cache, options, context.calibration)
        details["calibration"] = {"method": options.calibration_method,
                                  "source": context.calibration_source,
                                  "batches": len(context.calibration)}

        def quantize(path: Path, kept: list[str]) -> None:
            quantize_static(source, path, options, cache=cache, nodes_kept_float=preset + kept)
    else:
        def quantize(path: Path, kept: list[str]) -> None:
            quantize_dynamic(source, path, options, nodes_kept_float=preset + kept)

    if context.validation is None or not options.accuracy_aware:
        quantize(destination, [])
        details["nodes_kept_float"] = preset
        return details
    search = quantize_within_budget(
        quantize, destination, candidates=quantizable_nodes(
            source, options, weights_only=target.precision == "int8-dynamic"),
        validation=context.validation, budgets=target.budgets,
        max_nodes_kept_float=options.max_nodes_kept_float)
    details.update(nodes_kept_float=preset + search.nodes_kept_float,
                   sensitivity=[{"node": node, "mean_logit_error": round(score, 6)}
                                for node, score in search.sensitivity],
                   accuracy_before_search=asdict(search.first_accuracy))
    if not search.accuracy.passed:
        raise GateFailed(_search_failure(target, search))
    return details


def _search_failure(target: Target, search: Int8Search) -> str:
    return (f"target '{target.name}': int8 loses {search.first_accuracy.drop:.2f} points on "
            f"{search.accuracy.source} (budget {target.budgets.max_accuracy_drop:g}), and still "
            f"{search.accuracy.drop:.2f} (p={search.accuracy.p_value:.3g}) with "
            f"{len(search.nodes_kept_float)} most sensitive nodes "
            "kept in float; raise quantization.max_nodes_kept_float or budgets.max_accuracy_drop, "
            "or use onnx-fp16")


# ------------------------------------------------------------------------------ checks

def _checked_parity(target: Target, session, context: _Context) -> Parity:
    shapes = PARITY_SHAPES
    if target.format == "tflite":  # a fixed length: no longer rows than it was converted for
        shapes = [(batch, min(length, context.max_length)) for batch, length in PARITY_SHAPES]
    parity = check_parity(session, context.model, context.inputs.random_feeds(shapes=shapes),
                          tolerance=LOGIT_TOLERANCE.get(target.precision))
    if not parity.passed:
        raise UserError(f"target '{target.name}': exported logits differ from PyTorch by "
                        f"{parity.max_abs_diff:.2e} (> {parity.tolerance:.0e}); "
                        "the export is wrong, report it with the model's config")
    return parity


def _checked_accuracy(target: Target, session, context: _Context) -> Accuracy | None:
    if context.validation is None:
        return None
    accuracy = measure(session_logits(session, context.validation.feeds_list), context.validation,
                       budgets=target.budgets)
    if not accuracy.passed:
        raise GateFailed(f"target '{target.name}': loses {accuracy.drop:.2f} points of accuracy "
                         f"on {accuracy.source} (agreement with fp32 {accuracy.agreement:.1f}%, "
                         f"p={accuracy.p_value:.3g}), over its budget of {accuracy.budget:g}; raise "
                         "budgets.max_accuracy_drop or choose a higher precision")
    return accuracy


def _with_tokenizer(target: Target, context: _Context, onnx_path: Path, session, staging: Path) -> dict:
    """Beside the model, the same model behind the student's tokenizer as operators: strings
    in, logits out; its ids and logits checked (tokenizer_graph.check_front)."""
    import onnx

    from edgekd.exporting import tokenizer_graph as graph

    plain = onnx.load(str(onnx_path))
    if context.front is None:
        opset = next(entry.version for entry in plain.opset_import if entry.domain in ("", "ai.onnx"))
        context.front = graph.build_front(context.tokenizer, max_length=context.max_length,
                                          pair=context.validation_texts is not None
                                          and context.validation_texts.text_pairs is not None,
                                          opset=opset, ir_version=plain.ir_version)
    front = context.front
    merged = graph.merged_model(front.model, plain, model_inputs=list(session.input_names))
    path, merged_session, details = graph.write_string_model(
        merged, staging, files=(graph.MODEL_FILE, graph.ORT_MODEL_FILE, graph.REQUIRED_OPERATORS_FILE),
        mobile=target.format != "onnx", scratch=context.scratch / f"{target.name}-strings",
        optimization_level=target.graph_optimization_level)
    rows = context.validation_texts
    checks = graph.check_front(front, context.tokenizer, merged=merged_session, plain=session,
                               texts=rows.texts if rows is not None else [],
                               pairs=rows.text_pairs if rows is not None and front.pair else None,
                               source="validation data" if rows is not None else "no --data given")
    # the plain artifact's own tolerance against PyTorch (int8 has none: its predictions must not move)
    tolerance = LOGIT_TOLERANCE.get(target.precision)
    checks["logit_parity"]["tolerance"] = tolerance
    parity = checks["logit_parity"]
    if parity["predictions_changed"] or (tolerance is not None and parity["max_abs_diff"] > tolerance):
        raise UserError(f"target '{target.name}': the model with the tokenizer inside gives logits "
                        f"{parity['max_abs_diff']:.2e} away from the plain model's ({parity['predictions_changed']} "
                        "predictions changed); export without --with-tokenizer and report it with the model's config")
    if "arm64" in context.verify:
        details["verified"] = {"arm64": _strings_on_arm64(target, path, merged_session, context, pair=front.pair)}
    return {"model_file": path.name,
            "inputs": {name: ["batch"] for name in ([graph.TEXT_INPUT, graph.PAIR_INPUT] if front.pair
                                                    else [graph.TEXT_INPUT])},
            "outputs": {"logits": ["batch", "num_labels"], graph.EXACT_OUTPUT: ["batch"]},
            "size_bytes": path.stat().st_size, **graph.custom_ops_record(), **details, **checks,
            "unsafe_characters": front.unsafe_characters, "max_length": front.max_length,
            "notes": [graph.EXACT_NOTE, graph.NUL_NOTE]}


def _verified_on_arm64(target: Target, model_path: Path, session, context: _Context) -> dict:
    """The artifact run under arm64 emulation against its x86 run (edgekd/exporting/verify.py)."""
    if target.format == "pte":
        return {"passed": None, "note": "not run: ExecuTorch's runtime is verified on x86 only"}
    if target.format == "tflite":  # ai-edge-litert 2.x ships Linux wheels for x86-64 only (macOS: arm64 too)
        return {"passed": None, "note": "not run: the LiteRT interpreter (ai-edge-litert) has no Linux aarch64 "
                                        "wheel to run under emulation; verified on x86 only"}
    from edgekd.exporting.verify import verify_arm64

    rows = context.validation or _random_rows(context)
    return verify_arm64(model_path, session, rows, precision=target.precision, budgets=target.budgets,
                        ort_format=target.format == "ort")


def _strings_on_arm64(target: Target, path: Path, session, context: _Context, *, pair: bool) -> dict:
    """The model with the tokenizer inside under arm64 emulation, on the validation text as
    strings (the same rows, in the same batches, as the plain model's check)."""
    from dataclasses import replace

    from edgekd.exporting import tokenizer_graph as graph
    from edgekd.exporting.validation import BATCH_SIZE
    from edgekd.exporting.verify import verify_arm64

    rows = context.validation_texts
    if rows is None or context.validation is None:
        return {"passed": None, "note": "not run: the model takes strings, and no --data was given"}
    batches = [graph.string_feeds(rows.texts[start:start + BATCH_SIZE],
                                  rows.text_pairs[start:start + BATCH_SIZE] if pair else None)
               for start in range(0, len(rows.texts), BATCH_SIZE)]
    return verify_arm64(path, session, replace(context.validation, feeds_list=batches), precision=target.precision,
                        budgets=target.budgets, ort_format=target.format == "ort", custom_ops=True)


def _random_rows(context: _Context) -> ValidationSet:
    """Random batches with the fp32 student's logits: rows to verify on without --data."""
    feeds_list = context.inputs.random_feeds(shapes=((8, 64),) * 8)
    reference = session_logits(_TorchSession(context.model), feeds_list)
    return ValidationSet(source=f"random {context.inputs.kind} batches (no --data given)", feeds_list=feeds_list,
                         labels=np.full(len(reference), -1), reference_logits=reference)


class _TorchSession:
    """The PyTorch student behind a session's `run`, for reference logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval().float()

    @torch.inference_mode()
    def run(self, output_names, feeds):
        inputs = model_inputs(self.model, {name: torch.from_numpy(value) for name, value in feeds.items()})
        return [self.model(**inputs).logits.float().numpy()]


# ------------------------------------------------------------------------------ manifest

def _manifest_details(target: Target, accuracy: Accuracy | None, details: dict) -> dict:
    """What a classifier's manifest adds to every task's fields."""
    return {
        "opset": details.get("opset"),  # as written; None for .pte
        "exporter": {"pte": "torch.export", "tflite": "litert-torch"}.get(target.format, target.exporter),
        "graph_optimization_level": target.graph_optimization_level,
        "accuracy": {**asdict(accuracy), "verdict": accuracy.describe()} if accuracy is not None else {
            "checked": False,
            "note": "no validation data given: checked on random batches only, accuracy "
                    "budget not held; pass --data to measure it"},
        "nodes_kept_float": details.get("nodes_kept_float", []),
        **{key: value for key, value in details.items() if key not in ("opset", "nodes_kept_float")}}
