"""Teacher outputs computed once, stored on disk as memory-mapped arrays, reused: one cache
module for every task, with two payloads.

A cache folder is named by a hash of everything its contents depend on: the teacher's
weights, the tokenised data (which fixes the text, the tokenizer and --max-length), and
which outputs are stored. Change any of them and a new folder is built; the same run
again (or every later epoch) reads the stored arrays instead of running the teacher.
`built_once` is the one build protocol: the ranks write into a staging folder beside the
final one, rank 0 adds meta.json and renames it into place, so a reader never sees a
half-built cache and a cache two runs build at once is kept once. meta.json records the
SHA-256 of every file; a cache whose files are missing, truncated or changed is reported in
one line and rebuilt, never read.

Dense rows (text classification), `<root>/teacher-outputs/<key>/` (`.npy`, mmap, never pickles):

    meta.json                    rows, parts, what is stored, format version
    part-<p>/offsets.npy         (rows_p + 1,) token offset of each row in this part
    part-<p>/logits.npy          (rows_p, num_labels)
    part-<p>/hidden-<layer>.npy  (tokens_p, width)           only when a loss needs it
    part-<p>/attention-<layer>.npy (sum of heads * len^2,)   flattened per row
    part-<p>/query.npy, key.npy, value.npy (tokens_p, width) MiniLM's last layer

Row i lives in part i % parts at position i // parts: with N processes each builds
one part (its shard) at the same time.

Sparse top-k (causal LMs), `<root>/lm-top-k/<key>/`: the teacher's top-k next-token
log-probabilities. With a vocabulary under 65,536 ids are uint16, so k = 64 costs
64 * (2 + 2) = 256 bytes per token (fp16 log-probabilities); the full distribution over
SmolLM2's 49,152 tokens would be 98 KB in fp16. The probability outside the top-k is not
stored: it is 1 minus their sum, which the loss uses as a tail bucket (edgekd/lm/losses.py).
Rank 0 alone builds it (the teacher runs over the text once, however many processes train):

    meta.json        k, temperature, examples, predicted positions, format version
    offsets.npy      (examples + 1,) int64: example i owns rows offsets[i]:offsets[i+1]
    token_ids.npy    (positions, k) uint16 or int32: the teacher's top-k tokens
    log_probs.npy    (positions, k) float16: their log-probabilities at `temperature`

Example i of length n has n - 1 rows: row t is the prediction of token t + 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from edgekd.config import cache_dir
from edgekd.data import chunks, collate
from edgekd.training.distributed import Ranks
from edgekd.training.loop import rows_used
from edgekd.training.objective import Needs, forward_outputs
from edgekd.errors import UserError, exclusive
from edgekd.integrity import checksums, trusted
from edgekd.progress import progress_bar

FORMAT_VERSION = 2  # 2: the key hashes the tokens a chunk at a time
TOP_K_FORMAT_VERSION = 2  # 2: the key hashes the tokens as one int64 array
QKV_NAMES = ("query", "key", "value")


def over_rows_used(build: Callable, examples, config):
    """`build(examples)`, a teacher cache, built over only the examples a --max-steps run ending
    inside its first epoch trains on (loop.rows_used), answering by the examples' own index."""
    used = rows_used(len(examples), config)
    return build(examples) if used is None else _UsedRows(build(examples.subset(used)), used)


class _UsedRows:
    """A cache over some rows, answering by the dataset's own row index."""

    def __init__(self, cache, rows: list[int]):
        self.cache, self.position = cache, {index: position for position, index in enumerate(rows)}

    def gather(self, indices: list[int], **options):
        return self.cache.gather([self.position[index] for index in indices], **options)

    def __getattr__(self, name: str):
        return getattr(self.cache, name)


def default_cache_root() -> Path:
    """$EDGEKD_CACHE/teacher-outputs, else ~/.cache/edgekd/teacher-outputs."""
    return cache_dir() / "teacher-outputs"


def teacher_key(teacher: torch.nn.Module, contents: dict) -> str:
    """Hash of the teacher's weights (their exact bytes) and of `contents`: the data and
    what is stored."""
    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(contents).encode())
    return digest.hexdigest()[:20]


def cache_key(teacher: torch.nn.Module, encoded, needs: Needs) -> tuple[str, np.ndarray]:
    """The dense cache's key (teacher weights, tokenised data and the outputs stored) and each
    row's token count, from one pass over `encoded` (Encoded, or Tokenised: a chunk of rows at
    a time, so memory stays one chunk however many rows there are)."""
    digest, lengths = hashlib.sha256(), []
    for chunk in chunks(encoded):
        digest.update(json.dumps([chunk.input_ids, chunk.token_type_ids]).encode())
        lengths.append(np.fromiter(map(len, chunk.input_ids), dtype=np.int64, count=len(chunk)))
    key = teacher_key(teacher, {"data": digest.hexdigest(), "rows": len(encoded), "needs": needs.describe(),
                                "format": FORMAT_VERSION})
    return key, np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)


def built_once(final: Path, *, ranks: Ranks, build: Callable[[Path], dict | None], unwritable: str) -> Path:
    """`final`, built first unless it holds a cache whose checksums match: every rank runs
    `build(staging)` (each writes what is its to write; rank 0's return value is the
    meta.json, to which the checksums of every file are added), then rank 0 renames the
    staging folder into place. A cache that fails its checksums is said so in one line and
    rebuilt, never read. `unwritable` ends the one-line error for a folder that cannot be
    written."""
    # one builder per cache across processes: a second run waits for the first, then reuses its cache
    with exclusive(final, wait=True, what="teacher cache") if ranks.is_main else contextlib.nullcontext():
        return _built_once(final, ranks=ranks, build=build, unwritable=unwritable)


def _built_once(final: Path, *, ranks: Ranks, build: Callable[[Path], dict | None], unwritable: str) -> Path:
    if ranks.is_main:  # a cache that fails its checksums is removed, to be rebuilt
        trusted(final, what="teacher cache", record="meta.json")
    ranks.barrier()
    if (final / "meta.json").is_file():
        return final
    if ranks.is_main:  # holding the lock: any other staging folder of this cache is a killed run's
        for debris in final.parent.glob(f".{final.name}.building-*"):
            shutil.rmtree(debris, ignore_errors=True)
    staging = final.parent / f".{final.name}.building-{ranks.broadcast_token()}"
    try:
        staging.mkdir(parents=True, exist_ok=True)
        meta = build(staging)
    except BaseException as error:  # an error, Ctrl-C or SIGTERM: no half-built cache stays
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError):
            raise UserError(f"cannot write the teacher cache under {final.parent}: {error.strerror}; "
                            f"{unwritable}") from error
        raise
    ranks.barrier()
    if ranks.is_main:
        (staging / "meta.json").write_text(json.dumps({**meta, "checksums": checksums(staging, record="meta.json")}, indent=2))
        if final.exists():  # another run finished the same cache first: keep theirs
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.rename(final)
    ranks.barrier()
    return final


class TeacherCache:
    """Read side: gathers padded per-batch teacher outputs from the memory-mapped parts."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        meta = json.loads((self.folder / "meta.json").read_text())
        self.rows, self.parts = meta["rows"], meta["parts"]
        self.needs = Needs(hidden_layers=tuple(meta["needs"]["hidden"]),
                           attention_layers=tuple(meta["needs"]["attention"]),
                           qkv_layer=meta["needs"]["qkv"])
        self.heads = meta.get("heads")
        self._arrays = [self._open_part(p) for p in range(self.parts)]

    def _open_part(self, part: int) -> dict[str, np.ndarray]:
        folder = self.folder / f"part-{part}"
        return {file.stem: np.load(file, mmap_mode="r", allow_pickle=False)
                for file in folder.glob("*.npy")}

    def _locate(self, row: int) -> tuple[dict[str, np.ndarray], int]:
        return self._arrays[row % self.parts], row // self.parts

    def gather(self, indices: list[int], *, width: int, device: torch.device) -> dict:
        """Teacher outputs for rows `indices`, padded to `width` tokens, like `forward_outputs`."""
        logits = np.stack([self._locate(i)[0]["logits"][self._locate(i)[1]] for i in indices])
        outputs = {"logits": torch.from_numpy(logits.astype(np.float32)).to(device),
                   "hidden": {layer: self._tokens(f"hidden-{layer}", indices, width, device)
                              for layer in self.needs.hidden_layers},
                   "attention": {layer: self._attention(layer, indices, width, device)
                                 for layer in self.needs.attention_layers},
                   "qkv": None}
        if self.needs.qkv_layer is not None:
            outputs["qkv"] = tuple(self._tokens(name, indices, width, device) for name in QKV_NAMES)
        return outputs

    def _tokens(self, name: str, indices: list[int], width: int, device: torch.device) -> torch.Tensor:
        first, _ = self._locate(indices[0])
        padded = np.zeros((len(indices), width, first[name].shape[-1]), dtype=np.float32)
        for r, i in enumerate(indices):
            arrays, position = self._locate(i)
            start, end = arrays["offsets"][position], arrays["offsets"][position + 1]
            padded[r, : end - start] = arrays[name][start:end]
        return torch.from_numpy(padded).to(device)

    def _attention(self, layer: int, indices: list[int], width: int, device: torch.device) -> torch.Tensor:
        heads = self.heads[str(layer)]
        padded = np.zeros((len(indices), heads, width, width), dtype=np.float32)
        for r, i in enumerate(indices):
            arrays, position = self._locate(i)
            start = int(arrays["attention-offsets"][position])
            length = int(arrays["offsets"][position + 1] - arrays["offsets"][position])
            block = arrays[f"attention-{layer}"][start:start + heads * length * length]
            padded[r, :, :length, :length] = block.reshape(heads, length, length)
        return torch.from_numpy(padded).to(device)


def _attention_heads(teacher: torch.nn.Module, needs: Needs) -> dict[str, int]:
    return {str(layer): int(teacher.config.num_attention_heads) for layer in needs.attention_layers}


def open_or_build(teacher: torch.nn.Module, encoded, needs: Needs, *, root: Path,
                  device: torch.device, pad_token_id: int, ranks: Ranks, batch_size: int = 32,
                  description: str = "teacher outputs", show_progress: bool = True) -> TeacherCache:
    """The dense cache for this teacher, data (Encoded, or Tokenised) and `needs`: opened if
    built before, else built (each rank builds its own part), then opened by every rank."""
    key, lengths = cache_key(teacher, encoded, needs)

    def build(staging: Path) -> dict:
        _build_part(teacher, encoded, needs, lengths=lengths, folder=staging / f"part-{ranks.rank}",
                    part=ranks.rank, parts=ranks.world, device=device, pad_token_id=pad_token_id,
                    batch_size=batch_size, description=description, show_progress=show_progress)
        return {"rows": len(encoded), "parts": ranks.world, "needs": needs.describe(),
                "heads": _attention_heads(teacher, needs), "format": FORMAT_VERSION, "dtype": "float16"}

    final = built_once(Path(root) / key, ranks=ranks, build=build,
                       unwritable="set --cache-dir to a writable folder or pass --no-teacher-cache")
    return TeacherCache(final)


def _build_part(teacher, encoded, needs: Needs, *, lengths: np.ndarray, folder: Path, part: int, parts: int,
                device: torch.device, pad_token_id: int, batch_size: int, description: str,
                show_progress: bool) -> None:
    """Run the teacher over rows part, part + parts, ... (tokenised a batch at a time) and write
    them as `.npy` arrays; `lengths` holds every row's token count."""
    rows = list(range(part, len(encoded), parts))
    lengths = lengths[rows]
    folder.mkdir(parents=True, exist_ok=True)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    np.save(folder / "offsets.npy", offsets)
    heads = int(getattr(teacher.config, "num_attention_heads", 0) or 0)  # FNet mixes tokens without attention
    attention_offsets = np.concatenate([[0], np.cumsum(heads * lengths * lengths)])
    if needs.attention_layers:
        np.save(folder / "attention-offsets.npy", attention_offsets)
    writers: dict[str, NpyAppender] = {}
    teacher.eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    try:
        with progress_bar(description, total=len(rows), enabled=show_progress) as advance, torch.no_grad():
            for start in range(0, len(rows), batch_size):
                batch = collate(encoded, rows[start:start + batch_size], pad_token_id=pad_token_id)
                with autocast:
                    outputs = forward_outputs(teacher, {k: v.to(device) for k, v in batch.items()}, needs)
                positions = list(range(start, start + len(batch["index"])))
                _write_batch(writers, folder, outputs, positions, lengths=lengths)
                advance(len(positions))
    finally:
        for writer in writers.values():
            writer.close()


def _append(writers: dict, folder: Path, name: str, values: np.ndarray) -> None:
    """Append `values` (rows of one output) to its .npy file, as float16."""
    if name not in writers:
        writers[name] = NpyAppender(folder / f"{name}.npy", dtype=np.float16, row_shape=values.shape[1:])
    writers[name].append(values)


def _write_batch(writers: dict, folder: Path, outputs: dict, positions: list[int], *, lengths: np.ndarray) -> None:
    """Store one batch's outputs, each row trimmed to its real tokens, after the rows before it
    (a part's rows are written in order)."""
    _append(writers, folder, "logits", outputs["logits"].float().cpu().numpy())
    token_outputs = {f"hidden-{layer}": states for layer, states in outputs["hidden"].items()}
    if outputs["qkv"] is not None:
        token_outputs.update(zip(QKV_NAMES, outputs["qkv"]))
    for name, states in token_outputs.items():
        states = states.float().cpu().numpy()
        _append(writers, folder, name, np.concatenate([states[r, :lengths[p]] for r, p in enumerate(positions)]))
    for layer, attention in outputs["attention"].items():
        attention = attention.float().cpu().numpy()
        _append(writers, folder, f"attention-{layer}", np.concatenate(
            [attention[r, :, :lengths[p], :lengths[p]].reshape(-1) for r, p in enumerate(positions)]))


# ---------------------------------------------------------------------------- sparse top-k (causal LMs)

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


def open_or_build_top_k(teacher: torch.nn.Module, examples, *, top_k: int, temperature: float,
                        vocabulary: int, root: Path | None = None, batch_size: int = 8,
                        device: torch.device = torch.device("cpu"), show_progress: bool = True,
                        ranks: Ranks = Ranks()) -> TopKCache:
    """The top-k cache for this teacher, text (edgekd.lm.data.LMExamples), k and temperature:
    opened if built before, else built by rank 0 while the other ranks wait."""
    if not 1 <= top_k <= vocabulary:
        raise UserError(f"--top-k {top_k} must be between 1 and the vocabulary size {vocabulary}")
    key = teacher_key(teacher, {"ids": examples.digest(), "k": top_k, "temperature": temperature,
                                "vocabulary": vocabulary, "format": TOP_K_FORMAT_VERSION})

    def build(staging: Path) -> dict | None:
        if not ranks.is_main:
            return None
        return _build_top_k(teacher, examples, folder=staging, top_k=top_k, temperature=temperature,
                            vocabulary=vocabulary, batch_size=batch_size, device=device, show_progress=show_progress)

    final = built_once(Path(root or cache_dir() / "lm-top-k") / key, ranks=ranks, build=build,
                       unwritable="set --cache-dir to a writable folder or pass --top-k 0")
    return TopKCache.open(final)


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


class NpyAppender:
    """A `.npy` file written a block of rows at a time, straight to disk (memory stays one block,
    whatever the row count; nothing is copied afterwards): a header with room for any shape
    comes first, and its shape is written into it when the file is closed."""

    HEADER_BYTES = 128  # magic, version, length and the header's text, padded: the rows start aligned

    def __init__(self, path: Path, *, dtype, row_shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.row_shape, self.rows = Path(path), np.dtype(dtype), tuple(row_shape), 0
        self.file = self.path.open("wb")
        self.file.write(b"\0" * self.HEADER_BYTES)

    def append(self, values) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype)
        if values.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {values.shape[1:]} appended to {self.path.name} of {self.row_shape}")
        self.file.write(values.tobytes())
        self.rows += len(values)

    def close(self) -> None:
        """Write the header, with the shape of every row appended, and close."""
        if self.file.closed:
            return
        text = repr({"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                     "shape": (self.rows, *self.row_shape)})
        text = text.ljust(self.HEADER_BYTES - 10 - 1) + "\n"
        self.file.seek(0)
        self.file.write(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1"))
        self.file.close()


def _build_top_k(teacher: torch.nn.Module, examples, *, folder: Path, top_k: int, temperature: float,
                 vocabulary: int, batch_size: int, device: torch.device, show_progress: bool) -> dict:
    """Run the teacher once over every example (`examples.batch(indices)` pads a batch) and write
    the arrays into `folder`; returns the meta."""
    started = time.perf_counter()
    types = {"token_ids": np.uint16 if vocabulary <= np.iinfo(np.uint16).max + 1 else np.int32,
             "log_probs": np.float16}
    offsets = [0]
    # each batch's rows go straight to disk: memory stays one batch, whatever the token count
    sinks = {name: NpyAppender(folder / f"{name}.npy", dtype=dtype, row_shape=(top_k,)) for name, dtype in types.items()}
    try:
        with progress_bar("teacher top-k", total=len(examples), enabled=show_progress) as advance:
            for start in range(0, len(examples), batch_size):
                indices = list(range(start, min(start + batch_size, len(examples))))
                batch = {name: tensor.to(device) for name, tensor in examples.batch(indices).items()}
                for ids, values in top_k_rows(teacher, batch, top_k=top_k, temperature=temperature,
                                              vocabulary=vocabulary):
                    sinks["token_ids"].append(ids)
                    sinks["log_probs"].append(values)
                    offsets.append(offsets[-1] + len(ids))
                advance(len(indices))
    finally:
        for sink in sinks.values():
            sink.close()
    np.save(folder / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    return {"k": top_k, "temperature": temperature, "examples": len(examples), "positions": offsets[-1],
            "vocabulary": vocabulary, "format": TOP_K_FORMAT_VERSION, "build_seconds": time.perf_counter() - started}
