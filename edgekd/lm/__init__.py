"""Decoder language models: distil a causal LM, export it with a KV cache, bench and generate."""
