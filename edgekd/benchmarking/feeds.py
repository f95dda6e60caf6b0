"""What a bench feeds each model, per task: the only part of the bench stage that knows
whether its rows read tokens or pixels.

    TextFeeds   token ids from the teacher's tokenizer (or a trimmed model's own), at each
                latency sequence length; raw strings for a model with the tokenizer inside
    PixelFeeds  pixel_values from each model's own image processor (saved beside every
                student and artifact), so a teacher at 224 px and a student at 96 px see the
                same pictures, each at its own size

Both give the classifiers' measurement (edgekd/benchmarking/classifier.py) the same five
things: a check of each candidate before anything is timed, its logits over the data, batch-1
inputs for every latency point, inputs for the throughput batch, and what the report says
about its inputs.
"""

from __future__ import annotations

import json

import numpy as np

from edgekd.benchmarking.runtimes import ACCURACY_BATCH_SIZE, Candidate, logits_over, text_logits
from edgekd.errors import UserError
from edgekd.manifest import TOKENIZER_FILES


def config_of(candidate: Candidate) -> dict | None:
    if candidate.format == "pytorch":
        return candidate.model.config.to_dict()
    if candidate.config_folder is None:
        return None
    try:
        return json.loads((candidate.config_folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None  # no usable config: the run itself will report mismatches


def check_labels(candidate: Candidate, teacher_model) -> None:
    labels = (config_of(candidate) or {}).get("id2label")
    if labels is not None and len(labels) != teacher_model.config.num_labels:
        raise UserError(f"{candidate.name} predicts {len(labels)} classes but the teacher "
                        f"{teacher_model.config.num_labels}; bench models trained on the same labels")


# ---------------------------------------------------------------------------- text

class TextFeeds:
    """Token inputs: the teacher's tokenizer, or the model's own where its vocabulary is trimmed."""

    task = "text-classification"

    def __init__(self, data, tokenizer, *, max_length: int, sequence_lengths: tuple[int, ...]):
        self.data, self.tokenizer = data, tokenizer
        self.max_length, self.points = max_length, list(sequence_lengths)
        self._encoded: dict[int, object] = {}

    @classmethod
    def of(cls, data, tokenizer, teacher_model, settings) -> TextFeeds:
        return cls(data, tokenizer, max_length=settings.max_length, sequence_lengths=settings.sequence_lengths)

    def point_name(self, point: int) -> str:
        return f"{point} tokens"

    def prepare(self, candidate: Candidate, teacher_model) -> None:
        """Fail early, naming the model, when it cannot take the bench's inputs or labels."""
        config = config_of(candidate)
        vocabulary = (config or {}).get("vocab_size")
        if vocabulary and vocabulary < len(self.tokenizer):  # cannot take the teacher's ids: a trimmed vocabulary
            candidate.tokenizer = _own_tokenizer(candidate, vocabulary)
        limit = _max_positions(config) if config is not None else None
        longest = max(self.points)
        if limit is not None and longest > limit:
            raise UserError(f"--sequence-length {longest} is beyond the limit of {candidate.name} "
                            f"({limit} tokens); choose {limit} or fewer")
        fixed = getattr(candidate.model, "sequence_length", None)  # a .tflite takes one length
        if fixed is not None and max(longest, self.max_length) > fixed:
            raise UserError(f"{candidate.name} takes inputs of {fixed} tokens, fixed when it was converted; bench "
                            f"it with --sequence-length and --max-length of at most {fixed}, or export it with "
                            f"--max-length {max(longest, self.max_length)}")
        if limit is not None and self.max_length > limit:
            raise UserError(f"--max-length {self.max_length} is beyond the limit of "
                            f"{candidate.name} ({limit} tokens); choose {limit} or fewer")
        check_labels(candidate, teacher_model)

    def logits(self, candidate: Candidate, *, progress) -> np.ndarray:
        from edgekd.data import encode

        if candidate.takes_text:
            return text_logits(candidate, self.data.texts, self.data.text_pairs, progress=progress)
        own = candidate.tokenizer or self.tokenizer
        if id(own) not in self._encoded:
            self._encoded[id(own)] = encode(self.data, own, max_length=self.max_length)
        pad = own.pad_token_id if own.pad_token_id is not None else 0
        return logits_over(candidate, self._encoded[id(own)], pad_token_id=pad, progress=progress)

    def latency_feeds(self, candidates: list[Candidate], point: int) -> dict[str, dict]:
        return self._batches(candidates, self.data.texts[:1], point)

    def batch_feeds(self, candidates: list[Candidate], size: int) -> dict[str, dict]:
        texts = [self.data.texts[i % len(self.data)] for i in range(size)]
        return self._batches(candidates, texts, self.points[0])

    def _batches(self, candidates: list[Candidate], texts: list[str], length: int) -> dict[str, dict]:
        """Each candidate's inputs for the same texts, from its own tokenizer (or the teacher's)."""
        from edgekd.sessions import PAIR_INPUT, string_feeds

        by_tokenizer: dict[int, dict] = {}
        feeds = {}
        for candidate in candidates:
            own = candidate.tokenizer or self.tokenizer
            if candidate.takes_text:  # a pair graph times its first text with an empty second one
                strings = [text_of_length(own, text, length) for text in texts]
                feeds[candidate.name] = string_feeds(strings, [""] * len(strings) if PAIR_INPUT in
                                                     candidate.input_names else None)
                continue
            if id(own) not in by_tokenizer:
                by_tokenizer[id(own)] = _token_batch(own, texts, length)
            feeds[candidate.name] = by_tokenizer[id(own)]
        return feeds

    def row_record(self, candidate: Candidate) -> dict:
        """A trimmed model's vocabulary and the share of the bench text it tokenizes otherwise."""
        from edgekd.vocab import coverage_record

        if candidate.tokenizer is None:
            return {"vocabulary": None}
        texts = list(self.data.texts) + list(self.data.text_pairs or [])
        return {"vocabulary": coverage_record(self.tokenizer, candidate.tokenizer, texts)}

    def settings_record(self) -> dict:
        return {"max_length": self.max_length, "sequence_length": self.points[0],
                "sequence_lengths": list(self.points)}


def text_of_length(tokenizer, text: str, length: int) -> str:
    """`text`, repeated until it has at least `length` tokens: the graph cuts it to its
    max_length as the other rows' tokenizer cuts theirs, so every row runs as many tokens."""
    grown = text or "text"
    while len(tokenizer(grown)["input_ids"]) < length:
        grown = f"{grown} {text or 'text'}"
    return grown


def _token_batch(tokenizer, texts: list[str], length: int) -> dict[str, np.ndarray]:
    """Real texts, truncated or padded to exactly `length` tokens each."""
    encoded = tokenizer(texts, truncation=True, max_length=length, padding="max_length",
                        return_tensors="np")
    batch = {name: np.ascontiguousarray(value, dtype=np.int64) for name, value in encoded.items()}
    batch.setdefault("token_type_ids", np.zeros_like(batch["input_ids"]))  # RoBERTa-style tokenizers make none
    return batch


def _own_tokenizer(candidate: Candidate, vocabulary: int):
    """The tokenizer beside a model whose vocabulary is not the teacher's (edgekd/vocab.py
    trims it to the training text's tokens): its rows are tokenized with it, as an app would."""
    from transformers import AutoTokenizer

    folder = candidate.config_folder
    if folder is None or not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"{candidate.name} knows {vocabulary} token ids, not the teacher's tokenizer's, and "
                        "has no tokenizer files of its own; export it again with edgekd, or bench models that "
                        "share the teacher's tokenizer")
    own = AutoTokenizer.from_pretrained(folder)
    if len(own) > vocabulary:
        raise UserError(f"{candidate.name}'s tokenizer produces {len(own)} token ids but the model knows "
                        f"{vocabulary}; the model and its tokenizer files do not belong together")
    return own


def _max_positions(config: dict) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        if config.get(key):
            return int(config[key])
    return None


# ---------------------------------------------------------------------------- images

class PixelFeeds:
    """Pixel inputs, each model's from its own image processor and channel count."""

    task = "image-classification"
    points = ["image"]  # one latency point: batch 1 at each model's own input size

    def __init__(self, data, processor, teacher_model):
        self.data = data
        self._processors: dict[str, tuple[object, int]] = {}
        self._teacher = (processor, _channels(teacher_model.config.to_dict()))
        self._pixels: dict[tuple, np.ndarray] = {}

    @classmethod
    def of(cls, data, processor, teacher_model, settings) -> PixelFeeds:
        return cls(data, processor, teacher_model)

    def point_name(self, point) -> str:
        return "each model's input size"

    def prepare(self, candidate: Candidate, teacher_model) -> None:
        """Its image processor: the teacher's own, else the one saved beside the model."""
        check_labels(candidate, teacher_model)
        if candidate.name == "teacher":
            self._processors[candidate.name] = self._teacher
            return
        folder = candidate.config_folder
        if folder is None or not (folder / "preprocessor_config.json").is_file():
            raise UserError(f"{candidate.name} has no preprocessor_config.json beside it, so its pixels "
                            "cannot be made as at training; export it again with edgekd")
        from edgekd.models import load_preprocessor

        loaded = load_preprocessor(folder, task=self.task)
        # a student and its artifacts save the same processor: one instance, so _batch shares their pixels
        same = next((known for known, _ in self._processors.values() if known.to_dict() == loaded.to_dict()), loaded)
        self._processors[candidate.name] = (same, _channels(config_of(candidate) or {}))

    def _batch(self, candidate: Candidate, indices: list[int]) -> np.ndarray:
        from edgekd.pixels import batch_pixels

        processor, channels = self._processors[candidate.name]
        key = (id(processor), channels, tuple(indices))
        if key not in self._pixels:  # models with the same processor and channels share the arrays
            (values,) = batch_pixels(self.data, indices, [processor], channels=[channels])
            self._pixels[key] = np.ascontiguousarray(values.numpy(), dtype=np.float32)
        return self._pixels[key]

    def logits(self, candidate: Candidate, *, progress) -> np.ndarray:
        from edgekd.benchmarking.runtimes import predict
        from edgekd.pixels import batch_pixels

        processor, channels = self._processors[candidate.name]
        # ExecuTorch programs are usually exported for few rows: feed them one at a time.
        step = 1 if candidate.format == "pte" else ACCURACY_BATCH_SIZE
        outputs = []
        for start in range(0, len(self.data), step):  # decoded batch by batch: a photo folder is not held
            indices = list(range(start, min(start + step, len(self.data))))
            (values,) = batch_pixels(self.data, indices, [processor], channels=[channels])
            outputs.append(predict(candidate, {"pixel_values": values.numpy()}))
            progress(len(indices))
        return np.concatenate(outputs)

    def latency_feeds(self, candidates: list[Candidate], point) -> dict[str, dict]:
        return {c.name: {"pixel_values": self._batch(c, [0])} for c in candidates}

    def batch_feeds(self, candidates: list[Candidate], size: int) -> dict[str, dict]:
        indices = [i % len(self.data) for i in range(size)]
        return {c.name: {"pixel_values": self._batch(c, indices)} for c in candidates}

    def row_record(self, candidate: Candidate) -> dict:
        _, channels, height, width = self._batch(candidate, [0]).shape
        return {"input_size": {"channels": int(channels), "height": int(height), "width": int(width)}}

    def settings_record(self) -> dict:
        return {"input": "each model's own image processor", "sequence_lengths": []}


def _channels(config: dict) -> int:
    return int(config.get("num_channels", 3))
