"""The causal LM's prompt encoder (export --with-tokenizer): strings in, the Python
tokenizer's ids out, checked on every code point; tokenizers the operator cannot
reproduce are refused by name before any export work."""

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime_extensions")

from edgekd.errors import UserError  # noqa: E402
from edgekd.lm.export import export_lm  # noqa: E402
from edgekd.lm import prompt_encoder  # noqa: E402
from edgekd.targets import load_target  # noqa: E402

from lm_tiny import make_byte_level_tokenizer, make_llama, make_texts, save_llama  # noqa: E402


def test_a_byte_level_bpe_lm_gets_a_prompt_encoder_beside_each_onnx_and_ort_model(tmp_path):
    from edgekd.sessions import onnx_session

    tokenizer = make_byte_level_tokenizer()
    folder = tmp_path / "student"
    make_llama(layers=1, vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    held_out = make_texts(6, seed=5)
    fp32, mobile = export_lm(folder, targets=[load_target("onnx-fp32"), load_target("ort-mobile")],
                             out=tmp_path / "out", gate_texts=held_out, gate_source="held-out", show_progress=False,
                             with_tokenizer=True)
    texts = ["the cat sat", "Ünïcödé café naïve", "日本語 😀👍🏽", "  two  spaces\n", "", "<|endoftext|> after"]
    expected = tokenizer(texts)["input_ids"]
    for artifact, name in ((fp32, "prompt_encoder.onnx"), (mobile, "prompt_encoder.ort")):
        entry = json.loads((artifact.folder / "edgekd.json").read_text())["prompt_encoder"]
        assert entry["model_file"] == name and (artifact.folder / name).is_file()
        assert entry["custom_ops"]["library"] == "onnxruntime-extensions"
        assert entry["token_parity"]["held-out"] == {"rows": 6, "exact": 6, "flagged": 0}
        assert 0 < entry["flagged_characters"] < 100  # "<" and a few control characters (the census)
        session = onnx_session(artifact.folder / name, ort_format=name.endswith(".ort"), custom_ops=True)
        ids, mask, exact = session.run(None, {"text": np.array(texts, dtype=object)})
        assert ids.shape[1] == max(len(row) for row in expected)  # padded on the right to the longest
        assert exact.all() and [row[m == 1].tolist() for row, m in zip(ids, mask)] == expected
        # the operator drops the character after a "<" that starts no special token: flagged
        ids, mask, exact = session.run(None, {"text": np.array(["a<b c", "a <|endoftext|> b"], dtype=object)})
        assert not exact[0] and exact[1]
        assert ids[1][mask[1] == 1].tolist() == tokenizer("a <|endoftext|> b")["input_ids"]
    assert "HfJsonTokenizer" in (mobile.folder / "required_operators.prompt_encoder.config").read_text()


def test_a_tokenizer_without_an_exact_operator_is_refused_before_any_work(tmp_path):
    folder = save_llama(tmp_path / "student", layers=1)  # a word-level tokenizer
    with pytest.raises(UserError, match=r"cannot be reproduced exactly .*its model is WordLevel"):
        export_lm(folder, targets=[load_target("onnx-fp32")], out=tmp_path / "out", show_progress=False,
                  with_tokenizer=True)
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="--with-tokenizer serves ONNX and .ort targets"):
        export_lm(folder, targets=[load_target("executorch")], out=tmp_path / "out", show_progress=False,
                  with_tokenizer=True)


def test_a_difference_from_the_python_tokenizer_refuses_the_export():
    """The check itself: an encoder that drops a token is caught, naming the text."""
    tokenizer = make_byte_level_tokenizer()

    class Dropping:
        def run(self, names, feeds):
            rows = tokenizer(list(feeds["text"]), padding=True, return_tensors="np")
            ids, mask = rows["input_ids"].copy(), rows["attention_mask"].copy()
            mask[:, 0] = 0  # the first token lost, the row marked exact
            return {"input_ids": ids, "attention_mask": mask, "exact": np.ones(len(ids), dtype=bool)}[names[0]] \
                if len(names) == 1 else (ids, mask, np.ones(len(ids), dtype=bool))

    with pytest.raises(UserError, match=r"prompt ids differ .*'the cat'"):
        prompt_encoder.check_encoder(Dropping(), tokenizer, texts=["the cat"], source="held-out")
