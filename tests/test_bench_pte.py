"""`.pte` artifacts through the ExecuTorch runtime (slow: importing and lowering with
ExecuTorch takes ~30 s even for a two-layer module)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.benchmarking.runtimes import artifact_candidate, predict
from edgekd.benchmarking.classifier import bench
from edgekd.data import Columns, encode, load_file
from edgekd.models import load_classifier

pytestmark = pytest.mark.slow


class MeanPoolClassifier(nn.Module):
    """Token embeddings averaged under the mask, then a linear head: 3 logits."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(80, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask, token_type_ids):
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embedding(input_ids + token_type_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(pooled)


def write_pte(module: nn.Module, folder):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    # three distinct tensors: torch.export would treat one tensor passed twice as one input
    example = (torch.randint(5, 70, (2, 8)), torch.ones((2, 8), dtype=torch.long),
               torch.zeros((2, 8), dtype=torch.long))
    batch, sequence = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("sequence", min=2, max=128)
    program = torch.export.export(module, example, strict=False,
                                  dynamic_shapes=tuple({0: batch, 1: sequence} for _ in range(3)))
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    folder.mkdir(parents=True)
    (folder / "model.pte").write_bytes(lowered.buffer)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    (folder / "edgekd.json").write_text(json.dumps({
        "target": "executorch", "format": "pte", "precision": "fp32", "model_file": "model.pte",
        "inputs": {name: ["batch", "sequence"] for name in names}}))


def test_pte_runs_through_executorch_and_matches_pytorch(teacher_dir, test_file, tmp_path):
    pytest.importorskip("executorch.runtime")
    module = MeanPoolClassifier().eval()
    write_pte(module, tmp_path / "artifacts" / "executorch")
    teacher = load_classifier(teacher_dir)
    data = load_file(test_file, columns=Columns(), label2id=teacher[0].config.label2id)

    candidate = artifact_candidate(tmp_path / "artifacts" / "executorch", threads=1)
    encoded = encode(data, teacher[1], max_length=32)
    ids = torch.tensor([encoded.input_ids[0]])
    feeds = {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy()),
             "token_type_ids": np.zeros_like(ids.numpy())}
    with torch.no_grad():
        expected = module(*(torch.from_numpy(feeds[n]) for n in candidate.input_names)).numpy()
    np.testing.assert_allclose(predict(candidate, feeds), expected, atol=1e-5)

    report = bench(teacher=teacher_dir, student=None, artifacts=tmp_path / "artifacts", data=data,
                   teacher_model=teacher, max_length=32, sequence_length=32, repeats=3, warmup=1,
                   throughput_batch_size=4, measure_memory=False, show_progress=False)
    row = report["rows"][1]
    assert (row["name"], row["runtime"], row["format"]) == ("student/executorch", "executorch fp32", "pte")
    assert row["latency"]["p50_ms"] > 0 and row["throughput"]["examples_per_s"] > 0
    assert row["efficiency"] is None and row["params"] is None  # a .pte hides its graph
