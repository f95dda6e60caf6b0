"""Teacher outputs computed as training consumes them, stored on disk as memory-mapped arrays,
reused: one cache for every task, with two payloads (a classifier's dense outputs, a causal
LM's top-k).

A cache folder is named by a hash of everything its contents depend on: the teacher's
weights, the data (which fixes the text, the tokenizer and --max-length), what is stored, and
the order the rows are stored in. That order is the order the first epoch takes them in (or,
for a --max-steps run that ends inside it, the rows its steps use: the teacher sees no
others), cut into shards of SHARD_ROWS rows (more for over a million rows, `shard_size`). On one process the cache is written as training
consumes it: the first batch that needs a shard runs the teacher over that shard's rows and
seals it, so the first step waits for one shard, not for the whole dataset; later epochs and
later runs read the shards. Under torchrun every rank builds every world-th shard before
training starts.

Each shard is written under a temporary name, sealed with the SHA-256 of its files
(edgekd/integrity.py) and renamed into place, holding a lock while it is built: a run killed
mid-build leaves its finished shards, and the next run on the same teacher, data and seed
goes on from there, ending with the same bytes as a run never stopped; two runs at once
build each shard once. A shard whose files are missing, truncated or changed is said so in
one line and built again, never read.

    <root>/<key>/meta.json                 rows, rows per shard, what is stored, format version
    <root>/<key>/shard-<s>/<name>.npy      the rows' values, one after another (mmap, never pickles)
    <root>/<key>/shard-<s>/offsets-<name>.npy  (rows + 1,) where each row's values start

Dense rows (text classification), under `teacher-outputs/`: `logits` (one row of num_labels
each), `hidden-<layer>` and MiniLM's `query`, `key`, `value` ((tokens, width) each row),
`attention-<layer>` (heads * tokens^2 each row, flattened); float16.

Sparse top-k (causal LMs), under `lm-top-k/`: the teacher's top-k next-token
log-probabilities. With a vocabulary under 65,536 ids are uint16, so k = 64 costs
64 * (2 + 2) = 256 bytes per token (fp16 log-probabilities); the full distribution over
SmolLM2's 49,152 tokens would be 98 KB in fp16. The probability outside the top-k is not
stored: it is 1 minus their sum, which the loss uses as a tail bucket (edgekd/lm/losses.py).
An example of n tokens has n - 1 rows of `token_ids` and `log_probs` (k each): row t is the
prediction of token t + 1.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgekd.config import cache_dir
from edgekd.data import collate
from edgekd.errors import UserError, atomic_dir, atomic_write_text, exclusive
from edgekd.integrity import seal, trusted
from edgekd.progress import console, progress_bar
from edgekd.training.distributed import Ranks
from edgekd.training.objective import Needs, forward_outputs

FORMAT_VERSION = 3  # 3: shards in training order, each sealed as it is written
SHARD_ROWS = 1024  # the first step waits for one shard of teacher outputs
MAX_SHARDS = 1024  # larger data get larger shards: each shard's files stay mapped once read
QKV_NAMES = ("query", "key", "value")

Rows = list[dict[str, np.ndarray]]  # a teacher batch's outputs: per row, its values by name


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


def _order_of(order: Sequence[int] | None, rows: int) -> np.ndarray:
    return np.arange(rows, dtype=np.int64) if order is None else np.asarray(order, dtype=np.int64)


def _held_rows(data, order: np.ndarray):
    """`data` restricted to the rows `order` holds, in index order (the key hashes their values)."""
    return data if len(order) == len(data) else data.subset(np.sort(order).tolist())


class Shards:
    """The rows of one cache folder, shard by shard: position p of `order` (the row order[p])
    lives in shard p // shard_rows. `rows(name, indices)` reads rows by the data's own index,
    building first (with `compute`) any shard that is not on disk yet."""

    def __init__(self, folder: Path, *, order: np.ndarray, shard_rows: int,
                 compute: Callable[[list[int]], Iterator[Rows]], what: str, unwritable: str) -> None:
        self.folder, self.order, self.shard_rows, self.compute = Path(folder), order, shard_rows, compute
        self.what, self.unwritable = what, unwritable
        # a row's position, found by binary search: 16 bytes a row held (a table over every row
        # of the data would cost 8 bytes a row even when a --max-steps run holds 800 of 2M)
        self._by_row = np.argsort(order, kind="stable")
        self._rows = order[self._by_row]  # the rows held, sorted
        self.count = math.ceil(len(order) / shard_rows)
        self.build_seconds = 0.0
        self.verified: set[int] = set()  # shards another rank of this run verified or built: not hashed again
        self._open: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}

    def path(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:05d}"

    def missing(self) -> list[int]:
        return [s for s in range(self.count) if s not in self._open and not self.path(s).is_dir()]

    def rows_of(self, shards: Iterable[int]) -> int:
        return sum(len(self.order[s * self.shard_rows:(s + 1) * self.shard_rows]) for s in shards)

    def ensure(self, shards: Iterable[int], advance: Callable[[int], None] = lambda n: None) -> None:
        """Shards `shards` on disk and open: read if sealed and intact, else built now."""
        for shard in shards:
            if shard in self._open:
                continue
            final = self.path(shard)
            if not (shard in self.verified and final.is_dir()) and not trusted(final, what=self.what):
                # none yet, or corrupt (said so and removed)
                with exclusive(final, wait=True, what=self.what):  # one builder per shard
                    if not final.is_dir():  # else another run built it while this one waited
                        self._build(shard, final, advance)
            self._open[shard] = _opened(final)

    def _build(self, shard: int, final: Path, advance: Callable[[int], None]) -> None:
        """Run `compute` over the shard's rows and write it as every cache is written: in a
        staging folder (a killed run's swept), sealed, renamed into place (`atomic_dir`)."""
        started = time.perf_counter()
        rows = self.order[shard * self.shard_rows:(shard + 1) * self.shard_rows].tolist()
        writers: dict[str, NpyAppender] = {}
        offsets: dict[str, list[int]] = {}
        try:
            with atomic_dir(final) as staging:  # an error, Ctrl-C or SIGTERM: no half-built shard stays
                try:
                    for batch in self.compute(rows):
                        for row in batch:
                            for name, values in row.items():
                                if name not in writers:
                                    writers[name] = NpyAppender(staging / f"{name}.npy", dtype=values.dtype,
                                                                row_shape=values.shape[1:])
                                    offsets[name] = [0]
                                writers[name].append(values)
                                offsets[name].append(offsets[name][-1] + len(values))
                        advance(len(batch))
                finally:
                    for writer in writers.values():
                        writer.close()
                for name, values in offsets.items():
                    np.save(staging / f"offsets-{name}.npy", np.asarray(values, dtype=np.int64))
                seal(staging)
        except OSError as error:
            raise UserError(f"cannot write the {self.what} under {self.folder.parent}: {error.strerror}; "
                            f"{self.unwritable}") from error
        self.build_seconds += time.perf_counter() - started

    def rows(self, name: str, indices: Sequence[int]) -> list[np.ndarray]:
        """Row `i`'s values of `name`, for each i in `indices` (the data's own row numbers)."""
        indices = np.asarray(indices, dtype=np.int64)
        found = np.minimum(np.searchsorted(self._rows, indices), max(len(self._rows) - 1, 0))
        if len(self._rows) == 0 or (self._rows[found] != indices).any():
            raise ValueError(f"rows {indices[self._rows[found] != indices].tolist()[:5]} are not in {self.folder}")
        positions = self._by_row[found]
        shards = positions // self.shard_rows
        self.ensure(np.unique(shards).tolist())
        values_of_rows = []
        for position, shard in zip(positions.tolist(), shards.tolist()):
            values, offsets = self._open[shard][name]
            local = position - shard * self.shard_rows
            values_of_rows.append(values[offsets[local]:offsets[local + 1]])
        return values_of_rows


def _opened(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A shard's arrays by name: the values memory-mapped, the row offsets read."""
    names = [path.name[len("offsets-"):-len(".npy")] for path in folder.glob("offsets-*.npy")]
    return {name: (np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False),
                   np.load(folder / f"offsets-{name}.npy", allow_pickle=False)) for name in names}


def shard_size(rows: int) -> int:
    """Rows a shard holds: SHARD_ROWS, or more, so that there are at most MAX_SHARDS (a process
    may map only so many files: two million rows make 1,024 shards of 1,954 rows)."""
    return max(SHARD_ROWS, math.ceil(rows / MAX_SHARDS))


def open_shards(teacher: torch.nn.Module, *, root: Path, contents: dict, meta: dict, order: np.ndarray,
                compute: Callable[[list[int]], Iterator[Rows]], ranks: Ranks, lazy: bool, shard_rows: int | None,
                what: str, unwritable: str, description: str, show_progress: bool) -> Shards:
    """The cache of `teacher`'s outputs over the rows in `order` (`contents`: what else they
    depend on). With `lazy` (one process) nothing is built now: shards are built as they are
    first read. Else every rank builds every world-th missing shard now, with a progress bar."""
    shard_rows = shard_rows or shard_size(len(order))
    key = teacher_key(teacher, {**contents, "order": hashlib.sha256(order.tobytes()).hexdigest(),
                                "shard_rows": shard_rows, "format": FORMAT_VERSION})
    folder = Path(root) / key
    expected = {**meta, "rows": len(order), "shard_rows": shard_rows, "format": FORMAT_VERSION}
    if ranks.is_main:
        try:
            with exclusive(folder, wait=True, what=what):
                _check_meta(folder, expected, what=what)
        except OSError as error:
            raise UserError(f"cannot write the {what} under {folder.parent}: {error.strerror}; {unwritable}") from error
    ranks.barrier()
    shards = Shards(folder, order=order, shard_rows=shard_rows, compute=compute, what=what, unwritable=unwritable)
    if not lazy:  # this rank's shards verified, the missing built
        mine, missing = range(ranks.rank, shards.count, ranks.world), shards.missing()
        todo = shards.rows_of(s for s in missing if s % ranks.world == ranks.rank)
        with progress_bar(description, total=todo, enabled=show_progress and todo > 0) as advance:
            shards.ensure(mine, advance)
        ranks.barrier()
        shards.verified.update(range(shards.count))  # each rank checked its share: none is hashed twice
    return shards


def _check_meta(folder: Path, expected: dict, *, what: str) -> None:
    """meta.json written when the folder is made; a folder whose meta.json is unreadable or
    says otherwise is removed (said so in one line) and made again."""
    path, expected = folder / "meta.json", json.loads(json.dumps(expected))  # as it reads back
    if folder.exists():
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError):
            found = None
        if found == expected:
            return
        console.print(f"{what} {folder} is corrupt (its meta.json is missing or unreadable); rebuilding",
                      soft_wrap=True)
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(expected, indent=2))


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


class _Reader:
    """What both payloads' read sides tell of their shards."""

    shards: Shards

    @property
    def folder(self) -> Path:
        return self.shards.folder

    @property
    def build_seconds(self) -> float:  # spent writing shards in this process
        return self.shards.build_seconds


# ---------------------------------------------------------------------------- dense rows (classifiers)

class TeacherCache(_Reader):
    """Read side: gathers padded per-batch teacher outputs from the shards."""

    def __init__(self, shards: Shards, *, needs: Needs, heads: int) -> None:
        self.shards, self.needs, self.heads = shards, needs, heads

    def gather(self, indices: list[int], *, width: int, device: torch.device) -> dict:
        """Teacher outputs for rows `indices`, padded to `width` tokens, like `forward_outputs`."""
        logits = np.concatenate(self.shards.rows("logits", indices))
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
        rows = self.shards.rows(name, indices)
        padded = np.zeros((len(indices), width, rows[0].shape[-1]), dtype=np.float32)
        for r, values in enumerate(rows):
            padded[r, :len(values)] = values
        return torch.from_numpy(padded).to(device)

    def _attention(self, layer: int, indices: list[int], width: int, device: torch.device) -> torch.Tensor:
        padded = np.zeros((len(indices), self.heads, width, width), dtype=np.float32)
        for r, block in enumerate(self.shards.rows(f"attention-{layer}", indices)):
            length = math.isqrt(len(block) // self.heads)
            padded[r, :, :length, :length] = block.reshape(self.heads, length, length)
        return torch.from_numpy(padded).to(device)


def open_or_build(teacher: torch.nn.Module, encoded, needs: Needs, *, root: Path, device: torch.device,
                  pad_token_id: int, ranks: Ranks, batch_size: int = 32, description: str = "teacher outputs",
                  show_progress: bool = True, order: Sequence[int] | None = None, lazy: bool = False,
                  shard_rows: int | None = None) -> TeacherCache:
    """The dense cache of this teacher over the rows of `encoded` (Encoded, or Tokenised) in
    `order` (None: every row, in order), storing what `needs` asks for. With `lazy` its shards
    are built as training first reads them; else now, each rank its share."""
    order = _order_of(order, len(encoded))
    heads = int(getattr(teacher.config, "num_attention_heads", 0) or 0)  # FNet mixes tokens without attention
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    @torch.no_grad()
    def compute(rows: list[int]) -> Iterator[Rows]:
        teacher.eval()
        for start in range(0, len(rows), batch_size):
            batch = collate(encoded, rows[start:start + batch_size], pad_token_id=pad_token_id)
            with autocast:
                outputs = forward_outputs(teacher, {k: v.to(device) for k, v in batch.items()}, needs)
            yield _dense_rows(outputs, batch["attention_mask"].sum(1).tolist())

    shards = open_shards(teacher, root=root, contents={"data": _held_rows(encoded, order).digest(),
                                                       "needs": needs.describe()},
                         meta={"needs": needs.describe(), "heads": heads, "dtype": "float16"}, order=order,
                         compute=compute, ranks=ranks, lazy=lazy, shard_rows=shard_rows, what="teacher cache",
                         unwritable="set --cache-dir to a writable folder or pass --no-teacher-cache",
                         description=description, show_progress=show_progress)
    return TeacherCache(shards, needs=needs, heads=heads)


def _dense_rows(outputs: dict, lengths: list[int]) -> Rows:
    """One batch's outputs per row, trimmed to its real tokens, as float16."""
    half = lambda tensor: tensor.float().cpu().numpy().astype(np.float16)  # noqa: E731
    logits = half(outputs["logits"])
    tokens = {f"hidden-{layer}": half(states) for layer, states in outputs["hidden"].items()}
    if outputs["qkv"] is not None:
        tokens.update(zip(QKV_NAMES, map(half, outputs["qkv"])))
    attention = {f"attention-{layer}": half(weights) for layer, weights in outputs["attention"].items()}
    return [{"logits": logits[r:r + 1],
             **{name: states[r, :length] for name, states in tokens.items()},
             **{name: weights[r, :, :length, :length].reshape(-1) for name, weights in attention.items()}}
            for r, length in enumerate(lengths)]


# ---------------------------------------------------------------------------- sparse top-k (causal LMs)

class TopKCache(_Reader):
    """Read side: padded (batch, tokens - 1, k) tensors for a batch of examples."""

    def __init__(self, shards: Shards, *, top_k: int, temperature: float, id_bytes: int) -> None:
        self.shards, self.top_k, self.temperature, self.id_bytes = shards, top_k, temperature, id_bytes

    @property
    def bytes_per_token(self) -> float:
        return self.top_k * (self.id_bytes + 2)  # ids and fp16 log-probabilities

    def gather(self, indices: list[int], *, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, width - 1, k) token ids and log-probabilities; padding rows hold a valid
        uniform distribution so that masked positions stay finite."""
        token_ids = torch.zeros((len(indices), width - 1, self.top_k), dtype=torch.long)
        log_probs = torch.full((len(indices), width - 1, self.top_k),
                               -float(np.log(self.top_k + 1)), dtype=torch.float32)
        for row, (ids, values) in enumerate(zip(self.shards.rows("token_ids", indices),
                                                self.shards.rows("log_probs", indices))):
            token_ids[row, :len(ids)] = torch.from_numpy(ids.astype(np.int64))
            log_probs[row, :len(values)] = torch.from_numpy(values.astype(np.float32))
        return token_ids, log_probs


def open_or_build_top_k(teacher: torch.nn.Module, examples, *, top_k: int, temperature: float,
                        vocabulary: int, root: Path | None = None, batch_size: int = 8,
                        device: torch.device = torch.device("cpu"), show_progress: bool = True,
                        ranks: Ranks = Ranks(), order: Sequence[int] | None = None, lazy: bool = False,
                        shard_rows: int | None = None) -> TopKCache:
    """The top-k cache of this teacher over the examples (edgekd.lm.data.LMExamples) in
    `order` (None: every example, in order), for k and temperature. With `lazy` its shards are
    built as training first reads them; else now, each rank its share."""
    if not 1 <= top_k <= vocabulary:
        raise UserError(f"--top-k {top_k} must be between 1 and the vocabulary size {vocabulary}")
    order = _order_of(order, len(examples))
    id_type = np.uint16 if vocabulary <= np.iinfo(np.uint16).max + 1 else np.int32

    def compute(rows: list[int]) -> Iterator[Rows]:
        teacher.eval()
        for start in range(0, len(rows), batch_size):
            batch = {name: tensor.to(device) for name, tensor in examples.batch(rows[start:start + batch_size]).items()}
            yield [{"token_ids": ids.astype(id_type), "log_probs": values.astype(np.float16)}
                   for ids, values in top_k_rows(teacher, batch, top_k=top_k, temperature=temperature,
                                                 vocabulary=vocabulary)]

    contents = {"ids": _held_rows(examples, order).digest(), "k": top_k, "temperature": temperature,
                "vocabulary": vocabulary}
    shards = open_shards(teacher, root=Path(root or cache_dir() / "lm-top-k"), contents=contents, meta=contents,
                         order=order, compute=compute, ranks=ranks, lazy=lazy, shard_rows=shard_rows,
                         what="teacher cache", unwritable="set --cache-dir to a writable folder or pass --top-k 0",
                         description="teacher top-k", show_progress=show_progress)
    return TopKCache(shards, top_k=top_k, temperature=temperature, id_bytes=np.dtype(id_type).itemsize)


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
