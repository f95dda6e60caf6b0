"""Sparse teacher cache: the teacher's top-k next-token log-probabilities, on disk.

A large teacher runs once over the training text; every later step (and every later run
on the same teacher, text, k and temperature) reads k token ids and k log-probabilities
per predicted token instead. With a vocabulary under 65,536 ids are uint16, so k = 64
costs 64 * (2 + 2) = 256 bytes per token (fp16 log-probabilities); the full distribution
over SmolLM2's 49,152 tokens would be 98 KB in fp16. The probability outside the top-k
is not stored: it is 1 minus their sum, which the loss uses as a tail bucket
(edgekd/lm/losses.py).

Layout of `<root>/lm-top-k/<key>/` (.npy opened with mmap, never pickles):

    meta.json        k, temperature, examples, predicted positions, format version
    offsets.npy      (examples + 1,) int64: example i owns rows offsets[i]:offsets[i+1]
    token_ids.npy    (positions, k) uint16 or int32: the teacher's top-k tokens
    log_probs.npy    (positions, k) float16: their log-probabilities at `temperature`

Example i of length n has n - 1 rows: row t is the prediction of token t + 1.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgekd.config import cache_dir
from edgekd.distill.distributed import Ranks
from edgekd.errors import UserError, atomic_dir
from edgekd.lm.data import LMExamples, collate
from edgekd.progress import progress_bar

FORMAT_VERSION = 1


def cache_key(teacher: torch.nn.Module, examples: LMExamples, *, top_k: int, temperature: float,
              vocabulary: int) -> str:
    """Hash of the teacher's weights, the token ids and what is stored."""
    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps({"ids": examples.input_ids, "k": top_k, "temperature": temperature,
                              "vocabulary": vocabulary, "format": FORMAT_VERSION}).encode())
    return digest.hexdigest()[:20]


@dataclass
class TopKCache:
    """Read side: padded (batch, tokens - 1, k) tensors for a batch of examples."""

    folder: Path
    top_k: int
    temperature: float
    offsets: np.ndarray
    token_ids: np.ndarray
    log_probs: np.ndarray
    build_seconds: float = 0.0

    @classmethod
    def open(cls, folder: Path) -> TopKCache:
        folder = Path(folder)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                      for name in ("offsets", "token_ids", "log_probs")}
        except (OSError, ValueError) as error:
            raise UserError(f"teacher cache {folder} is unreadable ({error}); delete it to rebuild") from error
        return cls(folder=folder, top_k=meta["k"], temperature=meta["temperature"], **arrays,
                   build_seconds=meta.get("build_seconds", 0.0))

    @property
    def bytes_per_token(self) -> float:
        rows = self.token_ids.shape[0]
        return (self.token_ids.nbytes + self.log_probs.nbytes) / max(rows, 1)

    def gather(self, indices: list[int], *, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, width - 1, k) token ids and log-probabilities; padding rows hold a valid
        uniform distribution so that masked positions stay finite."""
        token_ids = torch.zeros((len(indices), width - 1, self.top_k), dtype=torch.long)
        log_probs = torch.full((len(indices), width - 1, self.top_k),
                               -float(np.log(self.top_k + 1)), dtype=torch.float32)
        for row, index in enumerate(indices):
            start, end = int(self.offsets[index]), int(self.offsets[index + 1])
            token_ids[row, :end - start] = torch.from_numpy(self.token_ids[start:end].astype(np.int64))
            log_probs[row, :end - start] = torch.from_numpy(self.log_probs[start:end].astype(np.float32))
        return token_ids, log_probs


def open_or_build(teacher: torch.nn.Module, examples: LMExamples, *, top_k: int,
                  temperature: float, vocabulary: int, root: Path | None = None,
                  batch_size: int = 8, device: torch.device = torch.device("cpu"),
                  show_progress: bool = True, ranks: Ranks = Ranks()) -> TopKCache:
    """The cache for this teacher, text, k and temperature: opened if built before.

    Under torchrun rank 0 builds it while the other ranks wait, then every rank opens it:
    the teacher runs over the text once, however many processes train."""
    if not 1 <= top_k <= vocabulary:
        raise UserError(f"--top-k {top_k} must be between 1 and the vocabulary size {vocabulary}")
    key = cache_key(teacher, examples, top_k=top_k, temperature=temperature, vocabulary=vocabulary)
    folder = Path(root or cache_dir() / "lm-top-k") / key
    if ranks.is_main and not (folder / "meta.json").is_file():
        build(teacher, examples, folder=folder, top_k=top_k, temperature=temperature,
              vocabulary=vocabulary, batch_size=batch_size, device=device, show_progress=show_progress)
    ranks.barrier()
    return TopKCache.open(folder)


@torch.no_grad()
def top_k_rows(teacher: torch.nn.Module, batch: dict[str, torch.Tensor], *, top_k: int,
               temperature: float, vocabulary: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per example: (positions, k) token ids and log-probabilities of the teacher."""
    logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    log_probs = F.log_softmax(logits[..., :vocabulary].float() / temperature, dim=-1)
    values, ids = log_probs[:, :-1].topk(top_k, dim=-1)
    lengths = batch["attention_mask"].sum(1)
    return [(ids[row, :length - 1].cpu().numpy(), values[row, :length - 1].cpu().numpy())
            for row, length in enumerate(lengths.tolist())]


def build(teacher: torch.nn.Module, examples: LMExamples, *, folder: Path, top_k: int,
          temperature: float, vocabulary: int, batch_size: int, device: torch.device,
          show_progress: bool) -> None:
    """Run the teacher once over every example and write the arrays atomically."""
    started = time.perf_counter()
    id_type = np.uint16 if vocabulary <= np.iinfo(np.uint16).max + 1 else np.int32
    id_parts, value_parts, offsets = [], [], [0]
    with progress_bar("teacher top-k", total=len(examples), enabled=show_progress) as advance:
        for start in range(0, len(examples), batch_size):
            indices = list(range(start, min(start + batch_size, len(examples))))
            batch = {name: tensor.to(device) for name, tensor in collate(examples, indices).items()}
            for ids, values in top_k_rows(teacher, batch, top_k=top_k, temperature=temperature,
                                          vocabulary=vocabulary):
                id_parts.append(ids.astype(id_type))
                value_parts.append(values.astype(np.float16))
                offsets.append(offsets[-1] + len(ids))
            advance(len(indices))
    meta = {"k": top_k, "temperature": temperature, "examples": len(examples),
            "positions": offsets[-1], "vocabulary": vocabulary, "format": FORMAT_VERSION,
            "build_seconds": time.perf_counter() - started}
    with atomic_dir(folder, overwrite=True) as staging:
        np.save(staging / "offsets.npy", np.asarray(offsets, dtype=np.int64))
        np.save(staging / "token_ids.npy", np.concatenate(id_parts))
        np.save(staging / "log_probs.npy", np.concatenate(value_parts))
        (staging / "meta.json").write_text(json.dumps(meta, indent=2))
