"""Dynamic int8 for causal LMs, held to a perplexity budget.

Dynamic int8 quantises each MatMul's weights per output channel (int8, symmetric) and
its input activations per tensor at run time (uint8, asymmetric). Decoders carry a few
activation channels hundreds of times larger than the rest, mostly at the input of the
MLP's down projection: one per-tensor scale then rounds every other channel to nothing,
and quantising all MatMuls of SmolLM2 raises its perplexity from 46 to over 1,700.

So the int8 target is smoothed, then searched:

1. Smooth (SmoothQuant's channel migration, applied only where it is exact): where a
   group of weight MatMuls reads an activation that is the product of a per-channel
   factor (a norm's weight vector, or the output of another weight MatMul feeding only
   this product, as the up projection of a gated MLP), channel j of the activation is
   divided by s_j = max|x_j|^a / max|w_j|^(1-a) (a = 0.5) and row j of the weights
   multiplied by it. The fp32 function is unchanged; the outliers move into weights,
   which are quantised per channel. On SmolLM2 this alone brings all-int8 perplexity
   from 1,721 to 51 (fp32 46).
2. Score every weight MatMul alone: run the fp32 export on calibration text, quantise the
   MatMul's own input and weight in numpy the way the int8 kernels do, and measure the
   relative error of its output. Nothing here knows a model's layer names.
3. Keep the k highest-scoring MatMuls in float, for the smallest k whose perplexity on the
   gate text stays within `budget` times the fp32 export's: the keep-float search every
   task shares (edgekd/exporting/search.py: k = 0 first, then doubling, then bisection).

The quantised graph is the one ONNX Runtime's own dynamic quantiser writes
(DynamicQuantizeLinear, MatMulInteger, Cast, Mul: fused by ONNX Runtime into
DynamicQuantizeMatMul), built here with the weights quantised once, vectorised, so that
each step of the search is a graph rebuild rather than a re-quantisation.
"""

from __future__ import annotations

import math
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

# Texts the smoothing statistics and the MatMul scores are taken on (a few hundred tokens each).
RANKING_TEXTS = 4
SMOOTHING_ALPHA = 0.5  # SmoothQuant's default split of the outliers between activation and weight
# Nodes that read only a tensor's shape: a smoothed activation may still feed them.
SHAPE_ONLY_OPS = {"Shape", "Size"}
ONNX_FILE_LIMIT = 1_900_000_000  # protobuf's 2 GB cap, with room: larger models use external data


@dataclass(frozen=True)
class WeightMatMul:
    """A MatMul of an activation by a constant 2-D weight (K, N): what int8 quantises."""

    node: str  # the node's name (for people); `output` identifies it
    output: str
    activation: str
    weight: str


@dataclass
class PerplexitySearch:
    """What the search measured and chose."""

    budget: float  # largest allowed perplexity / fp32 perplexity
    fp32_perplexity: float
    perplexity: float  # of the model written
    matmuls: int  # weight MatMuls in the graph
    kept_float: list[str]  # node names, most damaged by int8 first
    probes: list[dict] = field(default_factory=list)  # {"kept_float": k, "perplexity": p} in order
    ranking: list[tuple[str, float]] = field(default_factory=list)  # (node, relative error), worst first
    smoothed: int = 0  # activations whose outliers were moved into the weights

    @property
    def ratio(self) -> float:
        return self.perplexity / self.fp32_perplexity

    def describe(self) -> dict:
        return {"budget": self.budget, "fp32_perplexity": self.fp32_perplexity,
                "perplexity": self.perplexity, "ratio": self.ratio, "matmuls": self.matmuls,
                "smoothed_activations": self.smoothed, "smoothing_alpha": SMOOTHING_ALPHA,
                "kept_float": self.kept_float, "probes": self.probes,
                "worst_matmuls": [{"node": node, "relative_error": error} for node, error in self.ranking[:10]]}


# ---------------------------------------------------------------------------- the graph

def weight_matmuls(graph) -> list[WeightMatMul]:
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    sites = []
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2:
            continue
        activation, weight = node.input
        tensor = initializers.get(weight)
        if tensor is None or activation in initializers or len(tensor.dims) != 2:
            continue
        sites.append(WeightMatMul(node=node.name or node.output[0], output=node.output[0],
                                  activation=activation, weight=weight))
    return sites


def quantize_weight(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 per output column (axis 1 of a (K, N) MatMul weight), symmetric: scale = max|w| / 127."""
    scale = (np.abs(weight).max(axis=0) / 127).astype(np.float32)
    scale[scale == 0] = 1.0
    return np.clip(np.rint(weight / scale), -127, 127).astype(np.int8), scale


def quantize_activation(x):
    """What DynamicQuantizeLinear does to a float tensor, returned dequantised (torch)."""
    import torch

    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (high - low) / 255 or 1.0
    zero_point = float(np.clip(round(-low / scale), 0, 255))
    return (torch.clamp(torch.round(x / scale) + zero_point, 0, 255) - zero_point) * scale


class Int8Builder:
    """Builds the int8 graph of one fp32 model for any set of MatMuls kept float."""

    def __init__(self, model) -> None:
        from onnx import numpy_helper

        if not any(opset.domain in ("", "ai.onnx") and opset.version >= 11 for opset in model.opset_import):
            raise ValueError("dynamic int8 needs opset 11 or newer")
        self.model = model
        self.sites = weight_matmuls(model.graph)
        initializers = {tensor.name: tensor for tensor in model.graph.initializer}
        self.weights = {site.weight: quantize_weight(numpy_helper.to_array(initializers[site.weight]))
                        for site in self.sites}

    def build(self, keep_float: set[str] = frozenset()):
        """A new ModelProto: every weight MatMul whose output is not in `keep_float` in int8."""
        from onnx import TensorProto, helper, numpy_helper

        quantised = {site.output: site for site in self.sites if site.output not in keep_float}
        nodes, new_initializers, activations, weights = [], [], {}, set()
        for node in self.model.graph.node:
            site = quantised.get(node.output[0]) if node.op_type == "MatMul" else None
            if site is None:
                nodes.append(node)
                continue
            if site.activation not in activations:  # q, k and v share one quantised input
                names = [f"{site.activation}_quantized", f"{site.activation}_scale",
                         f"{site.activation}_zero_point"]
                nodes.append(helper.make_node("DynamicQuantizeLinear", [site.activation], names,
                                              name=f"{site.node}_DynamicQuantizeLinear"))
                activations[site.activation] = names
            if site.weight not in weights:
                values, scale = self.weights[site.weight]
                new_initializers += [
                    numpy_helper.from_array(values, f"{site.weight}_quantized"),
                    numpy_helper.from_array(scale, f"{site.weight}_scale"),
                    numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{site.weight}_zero_point")]
                weights.add(site.weight)
            x, x_scale, x_zero_point = activations[site.activation]
            base = site.output
            nodes += [
                helper.make_node("MatMulInteger", [x, f"{site.weight}_quantized", x_zero_point,
                                                   f"{site.weight}_zero_point"],
                                 [f"{base}_int32"], name=f"{site.node}_quant"),
                helper.make_node("Mul", [x_scale, f"{site.weight}_scale"], [f"{base}_scales"],
                                 name=f"{site.node}_scales_mul"),
                helper.make_node("Cast", [f"{base}_int32"], [f"{base}_float"], to=TensorProto.FLOAT,
                                 name=f"{site.node}_cast"),
                helper.make_node("Mul", [f"{base}_float", f"{base}_scales"], [site.output],
                                 name=f"{site.node}_scale_output")]
        still_used = {name for node in nodes for name in node.input}
        graph = helper.make_graph(
            nodes, self.model.graph.name, list(self.model.graph.input), list(self.model.graph.output),
            initializer=[t for t in self.model.graph.initializer if t.name in still_used] + new_initializers,
            value_info=list(self.model.graph.value_info))
        built = helper.make_model(graph, producer_name="edgekd")
        del built.opset_import[:]
        built.opset_import.extend(self.model.opset_import)
        built.ir_version = self.model.ir_version
        return built

    def ranked_errors(self, texts: list[list[int]], *, threads: int) -> list[tuple[WeightMatMul, float]]:
        """Each weight MatMul's relative output error under dynamic int8, worst first:
        sqrt(sum |Y_int8 - Y|^2 / sum |Y|^2) over every token of `texts`, with the weights
        quantised as `build` writes them."""
        import torch
        from onnx import numpy_helper

        initializers = {tensor.name: tensor for tensor in self.model.graph.initializer}
        weights = {name: torch.from_numpy(numpy_helper.to_array(initializers[name]).copy())
                   for name in self.weights}
        dequantised = {name: torch.from_numpy(values.astype(np.float32) * scale)
                       for name, (values, scale) in self.weights.items()}
        squared_error = dict.fromkeys((site.output for site in self.sites), 0.0)
        squared_norm = dict.fromkeys((site.output for site in self.sites), 0.0)
        for values in captured(self.model, [site.activation for site in self.sites], texts, threads=threads):
            for site in self.sites:
                x = torch.from_numpy(values[site.activation]).reshape(-1, weights[site.weight].shape[0])
                exact = x @ weights[site.weight]
                approximate = quantize_activation(x) @ dequantised[site.weight]
                squared_error[site.output] += float(((approximate - exact) ** 2).sum())
                squared_norm[site.output] += float((exact ** 2).sum())
        errors = [(site, math.sqrt(squared_error[site.output] / max(squared_norm[site.output], 1e-30)))
                  for site in self.sites]
        return sorted(errors, key=lambda pair: -pair[1])


def save_onnx(model, path: Path) -> None:
    """One file when it fits protobuf's limit, else the weights beside it in `<name>.data`."""
    import onnx

    large = model.ByteSize() >= ONNX_FILE_LIMIT
    onnx.save_model(model, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=f"{path.name}.data" if large else None)


# ---------------------------------------------------------------------------- activations

def captured(model, names: list[str], texts: list[list[int]], *, threads: int) -> Iterator[dict]:
    """For each text, the values of the tensors `names` in one fp32 pass of `model`."""
    import onnx
    from onnx import helper

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known_outputs = {output.name for output in probe.graph.output}
    for name in dict.fromkeys(names):
        if name not in known_outputs:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "probe.onnx"
        save_onnx(probe, path)
        del probe
        scorer = SequenceScorer(path, threads=threads)
        outputs = [output.name for output in scorer.session.get_outputs()]
        for ids in texts:
            yield dict(zip(outputs, scorer.session.run(None, scorer.feed(ids))))


def smooth(model, sites: list[WeightMatMul], texts: list[list[int]], *, threads: int,
           alpha: float = SMOOTHING_ALPHA) -> int:
    """Move activation outliers into the weights wherever that leaves the fp32 function
    exactly as it was (step 1 of the module docstring); changes `model`'s initializers in
    place and returns how many activations were smoothed."""
    from onnx import numpy_helper

    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    by_activation: dict[str, list[WeightMatMul]] = defaultdict(list)
    for site in sites:
        by_activation[site.activation].append(site)
    site_outputs = {site.output: site for site in sites}

    def only_reader(name: str, node) -> bool:
        return [c.name for c in consumers[name]] == [node.name]

    def fold_target(activation: str, group: list[WeightMatMul]) -> tuple[str, int] | None:
        """(initializer, axis) that channel j of `activation` is multiplied by, or None."""
        readers = [c for c in consumers[activation] if c.op_type not in SHAPE_ONLY_OPS]
        if {c.output[0] for c in readers} != {site.output for site in group}:
            return None  # something else reads the activation: it must keep its values
        if any(len(consumers[site.weight]) != 1 for site in group):
            return None  # a weight shared with another node (tied embeddings)
        product = producers.get(activation)
        if product is None or product.op_type != "Mul":
            return None
        width = int(initializers[group[0].weight].dims[0])
        for factor in product.input:
            tensor = initializers.get(factor)
            if tensor is not None and list(tensor.dims) == [width] and only_reader(factor, product):
                return factor, 0  # a norm's weight vector
            source = site_outputs.get(factor)
            if (source is not None and only_reader(factor, product)
                    and len(consumers[source.weight]) == 1):
                return source.weight, 1  # columns of the MatMul feeding the product
        return None

    targets = {activation: fold_target(activation, group) for activation, group in by_activation.items()}
    targets = {activation: target for activation, target in targets.items() if target is not None}
    if not targets:
        return 0
    maxima: dict[str, np.ndarray] = {}
    for values in captured(model, list(targets), texts, threads=threads):
        for activation in targets:
            value = np.abs(values[activation]).reshape(-1, values[activation].shape[-1]).max(axis=0)
            maxima[activation] = np.maximum(maxima.get(activation, 0), value)

    def store(name: str, array: np.ndarray) -> None:
        initializers[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))

    for activation, (factor, axis) in targets.items():
        weights = [numpy_helper.to_array(initializers[site.weight]) for site in by_activation[activation]]
        weight_maxima = np.max([np.abs(weight).max(axis=1) for weight in weights], axis=0)
        scale = (np.maximum(maxima[activation], 1e-5) ** alpha
                 / np.maximum(weight_maxima, 1e-5) ** (1 - alpha)).astype(np.float32)
        for site, weight in zip(by_activation[activation], weights):
            store(site.weight, weight * scale[:, None])
        values = numpy_helper.to_array(initializers[factor])
        store(factor, values / scale if axis == 0 else values / scale[None, :])
    return len(targets)


# ---------------------------------------------------------------------------- perplexity

class SequenceScorer:
    """An exported causal LM file (edgekd.lm.export's inputs and outputs), scored on token ids."""

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        from edgekd.lm.generate import open_lm_session

        self.session, self.past_names, self.kv_heads, self.head_dim = open_lm_session(path, threads=threads)

    def feed(self, ids: list[int]) -> dict[str, np.ndarray]:
        from edgekd.lm.generate import prefill_feed

        return prefill_feed(ids, self.past_names, kv_heads=self.kv_heads, head_dim=self.head_dim)

    def perplexity(self, texts: list[list[int]]) -> float:
        return perplexity_of(lambda ids: self.session.run(["logits"], self.feed(ids))[0][0], texts)


def perplexity_of(logits_of: Callable[[list[int]], np.ndarray], texts: list[list[int]]) -> float:
    """exp of the mean next-token cross-entropy over `texts` (token ids), where `logits_of(ids)`
    gives one sequence's (len(ids), vocab) logits: what every perplexity gate measures."""
    total, count = 0.0, 0
    for ids in texts:
        logits = np.asarray(logits_of(ids))[:-1].astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        total -= float(log_probs[np.arange(len(ids) - 1), ids[1:]].sum())
        count += len(ids) - 1
    return math.exp(total / max(count, 1))


# ---------------------------------------------------------------------------- the search

def search_int8(reference: Path, destination: Path, *, texts: list[list[int]], budget: float,
                fp32_perplexity: float | None = None, threads: int = 2,
                report: Callable[[str], None] = lambda message: None) -> PerplexitySearch:
    """Write the int8 model with the fewest MatMuls kept float whose perplexity on `texts`
    is at most `budget` times the fp32 model's: the keep-float search of every task
    (edgekd/exporting/search.py), judged by perplexity, ranked by each MatMul's own error."""
    import onnx

    from edgekd.exporting.search import keep_float_search

    if budget < 1:
        raise ValueError(f"a perplexity budget below 1 ({budget}) cannot be met even in fp32")
    texts = [ids for ids in texts if len(ids) >= 2]
    if not texts:
        raise ValueError("the int8 search needs at least one text of two or more tokens")
    model = onnx.load(str(reference))
    fp32 = fp32_perplexity or SequenceScorer(reference, threads=threads).perplexity(texts)
    calibration = texts[:RANKING_TEXTS]
    smoothed = smooth(model, weight_matmuls(model.graph), calibration, threads=threads)
    builder = Int8Builder(model)  # quantises the smoothed weights
    report(f"int8: fp32 perplexity {fp32:.2f} on {len(texts)} texts; {smoothed} activations smoothed; "
           f"{len(builder.sites)} MatMuls")
    names = {site.output: site.node for site in builder.sites}
    kept_now: list[str] = []

    def build(kept: list[str]) -> None:
        kept_now[:] = kept
        save_onnx(builder.build(set(kept)), destination)

    def judge() -> tuple[bool, float]:
        perplexity = SequenceScorer(destination, threads=threads).perplexity(texts)
        report(f"int8: {len(kept_now)} of {len(builder.sites)} MatMuls float -> perplexity {perplexity:.2f} "
               f"({perplexity / fp32:.3f}x fp32, budget {budget:g}x)")
        return perplexity <= budget * fp32, perplexity

    def rank() -> list[tuple[str, float]]:
        return [(site.output, error) for site, error in builder.ranked_errors(calibration, threads=threads)]

    search = keep_float_search(rank=rank, build=build, judge=judge, max_kept=len(builder.sites))
    return PerplexitySearch(budget=budget, fp32_perplexity=fp32, perplexity=search.measurement,
                      matmuls=len(builder.sites), kept_float=[names[output] for output in search.kept],
                      probes=[{"kept_float": k, "perplexity": p} for k, p in search.probes],
                      ranking=[(names[output], error) for output, error in search.ranking], smoothed=smoothed)
