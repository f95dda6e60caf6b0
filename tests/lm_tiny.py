"""Tiny random Llama-style causal LMs and a word-level tokenizer, built in-process."""

from __future__ import annotations

import random

import torch

WORDS = [f"w{i}" for i in range(40)] + ["the", "cat", "sat", "on", "mat", "a", "dog", "ran"]
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>"]


def make_lm_tokenizer(extra_words: tuple[str, ...] = ()):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: index for index, word in enumerate(SPECIAL + WORDS + list(extra_words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.Metaspace(replacement=" ", prepend_scheme="never")
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")


def make_llama(*, layers: int = 4, hidden: int = 32, heads: int = 4, kv_heads: int = 2,
               vocab_size: int = 52, seed: int = 0, tie: bool = False):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, max_position_embeddings=256,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=tie)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-trivial norms and larger weights: distinct, peaked predictions
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.copy_(1 + 0.1 * torch.randn(parameter.shape, generator=generator))
            else:
                parameter.mul_(4)
    return model.eval()


def make_texts(count: int, *, seed: int = 0) -> list[str]:
    """Repetitive word sequences: a tiny LM learns them in a few steps."""
    generator = random.Random(seed)
    patterns = [["the", "cat", "sat", "on", "the", "mat"], ["a", "dog", "ran", "on", "a", "mat"]]
    texts = []
    for _ in range(count):
        words = []
        for _ in range(generator.randint(1, 4)):
            words += generator.choice(patterns) + [generator.choice(WORDS[:40])]
        texts.append(" ".join(words))
    return texts


def save_llama(folder, **options):
    model, tokenizer = make_llama(**options), make_lm_tokenizer()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_byte_level_tokenizer():
    """A byte-level BPE tokenizer (GPT-2's kind) trained in-process on the tiny texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(make_texts(200) + ["Ünïcödé café, 日本語 😀 don't"], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
