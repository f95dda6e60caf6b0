"""Teacher outputs computed once, stored on disk as memory-mapped fp16 arrays, reused.

A cache folder is named by a hash of everything its contents depend on: the teacher's
weights, the tokenised data (which fixes the text, the tokenizer and --max-length), and
which outputs are stored. Change any of them and a new folder is built; the same run
again (or every later epoch) reads the stored arrays instead of running the teacher.

Layout of `<root>/<key>/` (all `.npy`, opened with mmap, never pickles):

    meta.json                    rows, parts, what is stored, format version
    part-<p>/offsets.npy         (rows_p + 1,) token offset of each row in this part
    part-<p>/logits.npy          (rows_p, num_labels)
    part-<p>/hidden-<layer>.npy  (tokens_p, width)           only when a loss needs it
    part-<p>/attention-<layer>.npy (sum of heads * len^2,)   flattened per row
    part-<p>/query.npy, key.npy, value.npy (tokens_p, width) MiniLM's last layer

Row i lives in part i % parts at position i // parts: with N processes each builds
one part (its shard) at the same time.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from edgekd.config import cache_dir
from edgekd.data import Encoded, batches
from edgekd.distill.distributed import Ranks
from edgekd.distill.objective import Needs, forward_outputs
from edgekd.errors import UserError
from edgekd.progress import progress_bar

FORMAT_VERSION = 1
QKV_NAMES = ("query", "key", "value")


def default_cache_root() -> Path:
    """$EDGEKD_CACHE/teacher-outputs, else ~/.cache/edgekd/teacher-outputs."""
    return cache_dir() / "teacher-outputs"


def cache_key(teacher: torch.nn.Module, encoded: Encoded, needs: Needs) -> str:
    """Hash of teacher weights, tokenised data and the outputs stored."""
    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps({"input_ids": encoded.input_ids, "token_type_ids": encoded.token_type_ids,
                              "needs": needs.describe(), "format": FORMAT_VERSION}).encode())
    return digest.hexdigest()[:20]


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


def open_or_build(teacher: torch.nn.Module, encoded: Encoded, needs: Needs, *, root: Path,
                  device: torch.device, pad_token_id: int, ranks: Ranks, batch_size: int = 32,
                  description: str = "teacher outputs", show_progress: bool = True) -> TeacherCache:
    """The cache for this teacher, data and `needs`: opened if built before, else built
    (each rank builds its own part), then opened by every rank."""
    key = cache_key(teacher, encoded, needs)
    final = Path(root) / key
    if not (final / "meta.json").is_file():
        staging = Path(root) / f".{key}.building-{ranks.broadcast_token()}"
        try:
            _build_part(teacher, encoded, needs, folder=staging / f"part-{ranks.rank}", part=ranks.rank,
                        parts=ranks.world, device=device, pad_token_id=pad_token_id,
                        batch_size=batch_size, description=description, show_progress=show_progress)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise UserError(f"cannot write the teacher cache under {root}: {error.strerror}; "
                            "set --cache-dir to a writable folder or pass --no-teacher-cache") from error
        ranks.barrier()
        if ranks.is_main:
            _finish(staging, final, rows=len(encoded), parts=ranks.world, needs=needs,
                    heads=_attention_heads(teacher, needs))
        ranks.barrier()
    return TeacherCache(final)


def _finish(staging: Path, final: Path, *, rows: int, parts: int, needs: Needs, heads: dict) -> None:
    meta = {"rows": rows, "parts": parts, "needs": needs.describe(), "heads": heads,
            "format": FORMAT_VERSION, "dtype": "float16"}
    (staging / "meta.json").write_text(json.dumps(meta, indent=2))
    if final.exists():  # another run finished the same cache first: keep theirs
        shutil.rmtree(staging, ignore_errors=True)
    else:
        staging.rename(final)


def _build_part(teacher, encoded: Encoded, needs: Needs, *, folder: Path, part: int, parts: int,
                device: torch.device, pad_token_id: int, batch_size: int, description: str,
                show_progress: bool) -> None:
    """Run the teacher over rows part, part + parts, ... and write them as `.npy` arrays."""
    rows = list(range(part, len(encoded), parts))
    lengths = np.array([len(encoded.input_ids[i]) for i in rows], dtype=np.int64)
    folder.mkdir(parents=True, exist_ok=True)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    np.save(folder / "offsets.npy", offsets)
    heads = int(teacher.config.num_attention_heads)
    attention_offsets = np.concatenate([[0], np.cumsum(heads * lengths * lengths)])
    if needs.attention_layers:
        np.save(folder / "attention-offsets.npy", attention_offsets)
    writers: dict[str, np.ndarray] = {}
    shard = Encoded(input_ids=[encoded.input_ids[i] for i in rows],
                    token_type_ids=None if encoded.token_type_ids is None
                    else [encoded.token_type_ids[i] for i in rows],
                    labels=[encoded.labels[i] for i in rows])
    teacher.eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    with progress_bar(description, total=len(rows), enabled=show_progress) as advance, torch.no_grad():
        for batch in batches(shard, batch_size=batch_size, pad_token_id=pad_token_id):
            with autocast:
                outputs = forward_outputs(teacher, {k: v.to(device) for k, v in batch.items()}, needs)
            _write_batch(writers, folder, outputs, batch["index"].tolist(), lengths=lengths,
                         offsets=offsets, attention_offsets=attention_offsets, rows=len(rows))
            advance(len(batch["index"]))
    for array in writers.values():
        array.flush()


def _writer(writers: dict, folder: Path, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in writers:
        writers[name] = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+",
                                                  dtype=np.float16, shape=shape)
    return writers[name]


def _write_batch(writers: dict, folder: Path, outputs: dict, positions: list[int], *,
                 lengths: np.ndarray, offsets: np.ndarray, attention_offsets: np.ndarray,
                 rows: int) -> None:
    """Store one batch's outputs, each row trimmed to its real tokens."""
    logits = outputs["logits"].float().cpu().numpy()
    _writer(writers, folder, "logits", (rows, logits.shape[-1]))[positions] = logits
    token_outputs = {f"hidden-{layer}": states for layer, states in outputs["hidden"].items()}
    if outputs["qkv"] is not None:
        token_outputs.update(zip(QKV_NAMES, outputs["qkv"]))
    for name, states in token_outputs.items():
        states = states.float().cpu().numpy()
        array = _writer(writers, folder, name, (int(offsets[-1]), states.shape[-1]))
        for r, position in enumerate(positions):
            array[offsets[position]:offsets[position + 1]] = states[r, : lengths[position]]
    for layer, attention in outputs["attention"].items():
        attention = attention.float().cpu().numpy()
        array = _writer(writers, folder, f"attention-{layer}", (int(attention_offsets[-1]),))
        for r, position in enumerate(positions):
            length = lengths[position]
            block = attention[r, :, :length, :length].reshape(-1)
            array[attention_offsets[position]:attention_offsets[position] + block.size] = block
