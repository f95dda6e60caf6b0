"""GGUF files for llama.cpp: a causal LM's weights, hyper-parameters and tokenizer in one file.

llama.cpp (and the apps built on it: LM Studio, Ollama, llamafile, the phone apps) runs a
`.gguf` file alone, so everything it needs goes inside: the architecture's hyper-parameters,
every tensor under llama.cpp's own names, and the tokenizer (its tokens, their types, the BPE
merges, the special ids and the chat template). Two precisions need nothing but the `gguf`
writer: f16 (norms stay f32) and Q8_0 (blocks of 32 weights, one f16 scale each: llama.cpp's
own 8-bit type; matrices whose rows are not a multiple of 32 stay f16). Q4_K_M, llama.cpp's
most used 4-bit mix, is made from the f16 file by llama.cpp's own quantiser (the `llama`
extra: llama-cpp-python); its K-quants need rows that are a multiple of 256, and llama.cpp
gives other matrices a simpler type of its choosing.

What llama.cpp expects and the Hugging Face layout differs in one place: its llama kernels
apply rotary embeddings to interleaved pairs, so the query and key rows of each head are
permuted as its own converter does. A file is checked by reading it back with transformers'
GGUF reader (which undoes that permutation), edgekd/lm/export.py's `_gguf_file`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from edgekd.errors import UserError

# Hugging Face model types written, and llama.cpp's architecture for each
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}
LLAMA_CPP_TYPES = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}  # made by llama.cpp's quantiser from f16
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5


def check_writable(model, tokenizer) -> None:
    """Refuse, before any work, a model or tokenizer a GGUF file cannot hold."""
    model_type = model.config.model_type
    if model_type not in ARCHITECTURES:
        raise UserError(f"GGUF targets serve {', '.join(ARCHITECTURES)} decoders; a {model_type} student is not "
                        "written (choose an onnx or executorch target)")
    _bpe_parts(tokenizer)


def write_gguf(model, tokenizer, path: Path, *, precision: str) -> dict:
    """Write `model` and `tokenizer` to `path` at `precision` (fp16, q8_0 or q4_k_m); what was written."""
    import gguf

    check_writable(model, tokenizer)
    if precision in LLAMA_CPP_TYPES:
        f16 = path.with_name(f"{path.stem}.f16.gguf")
        written = write_gguf(model, tokenizer, f16, precision="fp16")
        try:
            _llama_cpp_quantize(f16, path, LLAMA_CPP_TYPES[precision])
        finally:
            f16.unlink(missing_ok=True)
        return {**written, "tensors": "chosen by llama.cpp's quantiser", "quantised_by": "llama.cpp"}
    config = model.config
    architecture = ARCHITECTURES[config.model_type]
    writer = gguf.GGUFWriter(str(path), architecture)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_name(Path(str(getattr(config, "_name_or_path", "") or "student")).name or "student")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if precision == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    _add_tokenizer(writer, tokenizer, vocabulary=config.vocab_size)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[architecture.upper()], config.num_hidden_layers)
    counts = {"q8_0": 0, "f16": 0, "f32": 0}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and getattr(config, "tie_word_embeddings", False):
            continue  # llama.cpp reads the embedding as the output layer when the file has none
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UserError(f"the GGUF writer has no llama.cpp name for {name} of a {config.model_type} model; "
                            "choose an onnx or executorch target")
        data = tensor.detach().float().numpy()
        if architecture == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            data = _interleave_rotary(data, heads if "q_proj" in name else kv_heads)
        kind = _kind(data, precision)
        counts[kind] += 1
        if kind == "q8_0":
            writer.add_tensor(gguf_name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gguf_name, data.astype(np.float16 if kind == "f16" else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"architecture": architecture, "tensors": counts, "tokenizer": "gpt2 (byte-level BPE)"}


def _llama_cpp_quantize(source: Path, out: Path, file_type: str) -> None:
    """llama.cpp's own quantiser, f16 `source` -> `out` of `file_type` (a llama_ftype name)."""
    if not llama_cpp_installed():
        raise UserError(f"{file_type.removeprefix('LLAMA_FTYPE_MOSTLY_')} is made by llama.cpp's quantiser: "
                        "pip install 'edgekd[llama]' (it builds llama-cpp-python, about 15 CPU-minutes), "
                        "or choose gguf-q8_0")
    import ctypes

    import llama_cpp
    from llama_cpp._logger import set_verbose
    from llama_cpp._utils import suppress_stdout_stderr

    parameters = llama_cpp.llama_model_quantize_default_params()
    parameters.ftype = getattr(llama_cpp, file_type)
    parameters.nthread = 0  # llama.cpp's choice: every core
    set_verbose(False)  # its log lines are errors only
    with suppress_stdout_stderr(disable=False):  # and its own prints stay off the terminal
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(parameters))
    if status != 0 or not out.is_file():
        raise UserError(f"llama.cpp's quantiser failed on {source.name} (status {status}); nothing was written")


def llama_cpp_installed() -> bool:
    """Whether llama.cpp runs here (llama-cpp-python: pip install 'edgekd[llama]')."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _kind(data: np.ndarray, precision: str) -> str:
    if data.ndim < 2:
        return "f32"  # norms and biases: small, and llama.cpp keeps them in f32
    if precision == "q8_0" and data.shape[-1] % 32 == 0:
        return "q8_0"
    return "f16"


def _interleave_rotary(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's order of a query or key projection's rows: each head's two rotary halves
    interleaved (what its own converter does to Hugging Face checkpoints)."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _rope_theta(config) -> float:
    parameters = getattr(config, "rope_parameters", None) or {}
    return parameters.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0


def _bpe_parts(tokenizer) -> tuple[dict, list[str]]:
    """(vocabulary, merges) of a byte-level BPE tokenizer, or a refusal naming what it is."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = json.loads(backend.to_str()) if backend is not None else {}
    model = state.get("model") or {}
    pre_tokenizer = json.dumps(state.get("pre_tokenizer") or {})
    if model.get("type") != "BPE" or "ByteLevel" not in pre_tokenizer:
        kind = model.get("type") or type(tokenizer).__name__
        raise UserError(f"the GGUF writer stores byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, SmolLM), not a "
                        f"{kind} tokenizer; nothing was written: choose an onnx or executorch target")
    merges = [" ".join(pair) if isinstance(pair, list) else pair for pair in model.get("merges", [])]
    return model["vocab"], merges


def _add_tokenizer(writer, tokenizer, *, vocabulary: int) -> None:
    """The tokenizer as llama.cpp's "gpt2" model: tokens by id, their types, merges, special ids."""
    vocab, merges = _bpe_parts(tokenizer)
    pieces = {index: piece for piece, index in vocab.items()}
    added = {token.content: token.special for token in tokenizer.added_tokens_decoder.values()}
    for index, token in tokenizer.added_tokens_decoder.items():
        pieces[index] = token.content
    if max(pieces) >= vocabulary:
        raise UserError(f"the tokenizer has {max(pieces) + 1} ids but the model embeds {vocabulary}; the student "
                        "and its tokenizer do not belong together")
    tokens, types = [], []
    for index in range(vocabulary):  # rows past the tokenizer's ids: unused padding of the embedding
        piece = pieces.get(index)
        tokens.append(piece if piece is not None else f"[PAD{index}]")
        types.append(TOKEN_UNUSED if piece is None else
                     (TOKEN_CONTROL if added[piece] else TOKEN_USER_DEFINED) if piece in added else TOKEN_NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for role in ("bos", "eos", "pad", "unk"):
        token_id = getattr(tokenizer, f"{role}_token_id", None)
        if token_id is not None:
            getattr(writer, f"add_{role}_token_id")(int(token_id))
    writer.add_add_bos_token(False)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def read_back(path: Path):
    """The model and tokenizer transformers reads from the GGUF file (dequantised to float32)."""
    from edgekd.lm.models import _read_gguf

    model, tokenizer = _read_gguf(path)
    return model.to(torch.float32).eval(), tokenizer
