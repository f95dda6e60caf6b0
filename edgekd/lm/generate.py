"""Run an exported causal LM (edgekd.lm.export) step by step in ONNX Runtime."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd.errors import UserError, first_line


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    new_tokens: list[int]
    prefill_seconds: float
    decode_seconds: float  # all steps after the first token

    @property
    def decode_tokens_per_second(self) -> float:
        steps = len(self.new_tokens) - 1
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else 0.0


def open_lm_session(path: Path, *, threads: int = 1):
    """An ONNX Runtime session on an exported causal LM file, with the names of its cache
    inputs and their (kv_heads, head_dim)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own types for bad files
        raise UserError(f"cannot open {path}: {first_line(error)[:200]}; export it again") from error
    past_names = [i.name for i in session.get_inputs() if i.name.startswith("past_")]
    shape = session.get_inputs()[2].shape  # (batch, kv_heads, past, head_dim)
    return session, past_names, int(shape[1]), int(shape[3])


def prefill_feed(ids: list[int], past_names: list[str], *, kv_heads: int, head_dim: int
                 ) -> dict[str, np.ndarray]:
    """Inputs for one pass over `ids` with an empty cache."""
    feed = {"input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
    empty = np.zeros((1, kv_heads, 0, head_dim), dtype=np.float32)
    feed.update({name: empty for name in past_names})
    return feed


class Decoder:
    """An exported causal LM as a greedy generator; the runtime's part is `prefill`, `step`
    and `all_logits` (OnnxDecoder: .onnx/.ort; PteDecoder: .pte)."""

    def __init__(self, folder: Path, *, manifest: dict | None = None) -> None:
        """`manifest`: the folder's manifest when it is not written yet (during export)."""
        from edgekd.manifest import read_manifest

        folder = Path(folder)
        self.manifest = manifest if manifest is not None else read_manifest(folder)
        from edgekd.tasks import is_decoder

        if not is_decoder(self.manifest.get("task")):
            raise UserError(f"{folder} holds a {self.manifest.get('task')} artifact, not a causal LM; "
                            "pass a folder that edgekd export wrote for a causal LM")
        self.max_length = int(self.manifest["max_length"])
        self.folder = folder

    def check_length(self, prompt_tokens: int, new_tokens: int) -> None:
        if prompt_tokens + new_tokens > self.max_length:
            raise UserError(f"the prompt has {prompt_tokens} tokens and {new_tokens} new tokens were "
                            f"asked for, but the model was exported for at most {self.max_length}; "
                            "shorten the prompt, ask for fewer tokens or export with a larger --max-length")
        if prompt_tokens == 0:
            raise UserError("the prompt is empty; give at least one word")

    def prefill(self, prompt_ids: list[int]):
        """Logits of the last prompt position and the cache after the prompt."""
        raise NotImplementedError

    def step(self, token: int, presents, length: int):
        """One new token on top of a cache of `length - 1` positions: its logits and the cache."""
        raise NotImplementedError

    def all_logits(self, ids: list[int]) -> np.ndarray:
        """(len(ids), vocab) logits of one sequence (for perplexity)."""
        raise NotImplementedError

    def greedy(self, prompt_ids: list[int], *, new_tokens: int, stop_at_eos: bool = True) -> list[int]:
        return self.generate_ids(prompt_ids, new_tokens=new_tokens, stop_at_eos=stop_at_eos)[0]

    def generate_ids(self, prompt_ids: list[int], *, new_tokens: int, stop_at_eos: bool = True
                     ) -> tuple[list[int], float, float]:
        """Greedy tokens, prefill seconds (to the first token), decode seconds (the rest)."""
        self.check_length(len(prompt_ids), new_tokens)
        eos = self.manifest.get("eos_token_id")
        started = time.perf_counter()
        logits, presents = self.prefill(list(prompt_ids))
        produced = [int(logits.argmax())]
        prefill_seconds = time.perf_counter() - started
        started = time.perf_counter()
        while len(produced) < new_tokens and not (stop_at_eos and produced[-1] == eos):
            logits, presents = self.step(produced[-1], presents, len(prompt_ids) + len(produced))
            produced.append(int(logits.argmax()))
        return produced, prefill_seconds, time.perf_counter() - started


class OnnxDecoder(Decoder):
    """An exported artifact folder (edgekd.json + model.onnx/.ort) as a greedy generator."""

    def __init__(self, folder: Path, *, threads: int = 1, manifest: dict | None = None) -> None:
        super().__init__(folder, manifest=manifest)
        self.session, self.past_names, self.kv_heads, self.head_dim = open_lm_session(
            self.folder / self.manifest["model_file"], threads=threads)

    def prefill(self, prompt_ids: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
        logits, *presents = self.session.run(None, self._prefill_feed(prompt_ids))
        return logits[0, -1], presents

    def all_logits(self, ids: list[int]) -> np.ndarray:
        """In a single pass."""
        self.check_length(len(ids), 0)
        return self.session.run(["logits"], self._prefill_feed(ids))[0][0]

    def _prefill_feed(self, ids: list[int]) -> dict[str, np.ndarray]:
        return prefill_feed(ids, self.past_names, kv_heads=self.kv_heads, head_dim=self.head_dim)

    def step(self, token: int, presents: list[np.ndarray], length: int) -> tuple[np.ndarray, list[np.ndarray]]:
        feed = {"input_ids": np.asarray([[token]], dtype=np.int64),
                "attention_mask": np.ones((1, length), dtype=np.int64)}
        feed.update(zip(self.past_names, presents))
        logits, *presents = self.session.run(None, feed)
        return logits[0, -1], presents


class PteDecoder(Decoder):
    """An exported causal-LM .pte folder as a greedy generator: one token per call."""

    def __init__(self, folder: Path, *, threads: int = 1, manifest: dict | None = None) -> None:
        from edgekd.sessions import executorch_threads, load_pte_method

        super().__init__(folder, manifest=manifest)
        executorch_threads(threads)
        self.method = load_pte_method(self.folder / self.manifest["model_file"])

    def _logits(self, token: int, position: int) -> np.ndarray:
        import torch

        outputs = self.method.execute([torch.tensor([[token]], dtype=torch.long),
                                       torch.tensor([position], dtype=torch.long)])
        return np.asarray(outputs[0], dtype=np.float32)[0, -1]

    def prefill(self, prompt_ids: list[int]):
        for position, token in enumerate(prompt_ids):  # the program takes one token per call
            logits = self._logits(int(token), position)
        return logits, None

    def step(self, token: int, presents, length: int):
        return self._logits(int(token), length - 1), None

    def all_logits(self, ids: list[int]) -> np.ndarray:
        self.check_length(len(ids), 0)
        return np.stack([self._logits(int(token), position) for position, token in enumerate(ids)])


class GgufDecoder(Decoder):
    """A .gguf folder read back by transformers' GGUF reader (dequantised to float32): what the
    file holds, checked token by token against the student; llama.cpp itself runs it in apps."""

    def __init__(self, folder: Path, *, threads: int = 1, manifest: dict | None = None) -> None:
        from edgekd.lm.gguf import read_back

        super().__init__(folder, manifest=manifest)
        self.model, _ = read_back(self.folder / self.manifest["model_file"])

    def prefill(self, prompt_ids: list[int]):
        import torch

        with torch.no_grad():
            output = self.model(input_ids=torch.tensor([prompt_ids]), use_cache=True)
        return output.logits[0, -1].numpy(), output.past_key_values

    def step(self, token: int, presents, length: int):
        import torch

        with torch.no_grad():
            output = self.model(input_ids=torch.tensor([[token]]), past_key_values=presents, use_cache=True)
        return output.logits[0, -1].numpy(), output.past_key_values

    def all_logits(self, ids: list[int]) -> np.ndarray:
        import torch

        self.check_length(len(ids), 0)
        with torch.no_grad():
            return self.model(input_ids=torch.tensor([ids])).logits[0].numpy()


class LlamaCppDecoder(Decoder):
    """A .gguf file run by llama.cpp itself (through llama-cpp-python, the `llama` extra): its
    own kernels and quantised types, at `threads` threads, as the apps built on it run it."""

    def __init__(self, folder: Path, *, threads: int = 1, manifest: dict | None = None) -> None:
        super().__init__(folder, manifest=manifest)
        self.model = open_llama_cpp(self.folder / self.manifest["model_file"], context=self.max_length,
                                    threads=threads)

    def prefill(self, prompt_ids: list[int]):
        self.model.reset()
        self.model.eval(list(prompt_ids))
        return np.array(self.model.scores[len(prompt_ids) - 1], dtype=np.float32), None

    def step(self, token: int, presents, length: int):
        self.model.eval([int(token)])
        return np.array(self.model.scores[length - 1], dtype=np.float32), None

    def all_logits(self, ids: list[int]) -> np.ndarray:
        self.check_length(len(ids), 0)
        self.model.reset()
        self.model.eval(list(ids))
        return np.array(self.model.scores[:len(ids)], dtype=np.float32)


def open_llama_cpp(path: Path, *, context: int, threads: int):
    """llama.cpp's model on `path`, every position's logits kept, its own log lines silenced."""
    from llama_cpp import Llama

    try:
        return Llama(model_path=str(path), n_ctx=context, n_threads=threads, n_threads_batch=threads,
                     logits_all=True, verbose=False)
    except Exception as error:  # noqa: BLE001 - llama.cpp reports a bad file as a ValueError or RuntimeError
        raise UserError(f"llama.cpp cannot load {path}: {first_line(error)[:200]}; export it again") from error


def decoder_for(folder: Path, *, threads: int = 1, manifest: dict | None = None) -> Decoder:
    """The folder's artifact as a Decoder of its format (.onnx/.ort in ONNX Runtime, .pte in
    ExecuTorch, .gguf in llama.cpp when it is installed, else read back by transformers)."""
    from edgekd.manifest import read_manifest

    manifest = manifest if manifest is not None else read_manifest(Path(folder))
    if manifest.get("format") == "pte":
        return PteDecoder(folder, threads=threads, manifest=manifest)
    if manifest.get("format") == "gguf":
        from edgekd.lm.gguf import llama_cpp_installed

        kind = LlamaCppDecoder if llama_cpp_installed() else GgufDecoder
        return kind(folder, threads=threads, manifest=manifest)
    return OnnxDecoder(folder, threads=threads, manifest=manifest)


def generate(artifact: Path, prompt: str, *, new_tokens: int = 32, threads: int = 1) -> Generation:
    """Greedy continuation of `prompt` by the exported model in `artifact`."""
    from transformers import AutoTokenizer

    decoder = decoder_for(artifact, threads=threads)
    tokenizer = AutoTokenizer.from_pretrained(str(artifact))
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    produced, prefill_seconds, decode_seconds = decoder.generate_ids(prompt_ids, new_tokens=new_tokens)
    text = tokenizer.decode(produced, skip_special_tokens=True)
    return Generation(text=text, prompt_tokens=len(prompt_ids), new_tokens=produced,
                      prefill_seconds=prefill_seconds, decode_seconds=decode_seconds)
