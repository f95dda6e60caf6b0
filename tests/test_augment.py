"""--augment: word-substituted copies of the training texts, taught by the teacher's soft labels."""

from __future__ import annotations

import random
import re

import pytest
import torch

from conftest import KEYWORDS, make_rows, make_tokenizer


def _embeddings(tokenizer) -> torch.Tensor:
    """Rows where "good" is nearest "great", then "fine" (cosines 0.995, 0.96), every other
    word far from all three."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.zeros(80, 8)
    rows[:, 2:] = torch.randn(80, 6, generator=generator)
    vocabulary = tokenizer.get_vocab()
    for word, second in (("good", 0.0), ("great", 0.1), ("fine", 0.3)):
        rows[vocabulary[word]] = torch.tensor([1.0, second, 0, 0, 0, 0, 0, 0])
    return rows


def test_neighbours_are_the_nearest_whole_words_by_cosine():
    from edgekd.augment import Neighbours

    tokenizer = make_tokenizer()
    neighbours = Neighbours(_embeddings(tokenizer), tokenizer)
    # the pool is the whole-word tokens: no special tokens, no pieces, no word with a digit
    assert sorted(neighbours.words) == sorted(w for words in KEYWORDS.values() for w in words)
    neighbours.learn({"good", "Good", "bad", "unknownword"})
    assert neighbours.of("good")[:2] == ("great", "fine")
    assert neighbours.of("Good") == neighbours.of("good")  # an uncased tokenizer: one key
    assert "good" not in neighbours.of("good") and len(neighbours.of("bad")) == 8  # all but itself
    assert neighbours.of("unknownword") == ()  # split into pieces: never replaced


def test_a_copy_replaces_words_at_the_rate_by_their_neighbours_and_keeps_the_rest():
    from edgekd.augment import RATE, WORD, Neighbours, substituted

    tokenizer = make_tokenizer()
    neighbours = Neighbours(_embeddings(tokenizer), tokenizer)
    words = [random.Random(1).choice(["good", "Good", "bad", "w3"]) for _ in range(2000)]
    text = ", ".join(words) + "!"
    neighbours.learn(set(words))
    copy = substituted(text, neighbours, random.Random(0))
    new = WORD.findall(copy)
    assert re.sub(WORD.pattern, "", copy) == re.sub(WORD.pattern, "", text)  # punctuation, spaces, "w3" kept
    eligible = [(old, replaced) for old, replaced in zip([w for w in words if w != "w3"], new)]
    changed = [(old, replaced) for old, replaced in eligible if old != replaced]
    assert abs(len(changed) / len(eligible) - RATE) < 0.04  # 1,500 words: the rate within about 3 sd
    assert all(replaced.lower() in neighbours.of(old) for old, replaced in changed)
    assert all(replaced[0].isupper() == old[0].isupper() for old, replaced in changed)


def test_augmented_rows_are_unlabelled_reproducible_copies_after_the_originals():
    import numpy as np

    from edgekd.augment import augmented
    from edgekd.data import TextDataset

    tokenizer = make_tokenizer()
    texts = ["good movie w1 great", "a bad w2 door, fine", "chair table good"]
    data = TextDataset(texts=texts, labels=[2, 0, 1], label_names=["negative", "neutral", "positive"],
                       text_pairs=["great", "poor", "awful"])
    first = augmented(data, copies=3, embeddings=_embeddings(tokenizer), tokenizer=tokenizer, seed=0)
    again = augmented(data, copies=3, embeddings=_embeddings(tokenizer), tokenizer=tokenizer, seed=0)
    other = augmented(data, copies=3, embeddings=_embeddings(tokenizer), tokenizer=tokenizer, seed=1)
    assert len(first) == 12 and first.labels == [2, 0, 1] + [None] * 9
    assert list(first.texts)[:3] == texts and list(first.text_pairs)[:3] == ["great", "poor", "awful"]
    assert list(first.texts) == list(again.texts) and list(first.text_pairs) == list(again.text_pairs)
    assert list(first.texts) != list(other.texts)
    assert sum(copy != texts[i % 3] for i, copy in enumerate(list(first.texts)[3:])) >= 3  # copies differ
    # a subset (a split, a shuffled batch) reads the same rows as the whole
    picked = first.subset([7, 0, 11])
    assert list(picked.texts) == [first.texts[7], texts[0], first.texts[11]] and picked.labels == [None, 2, None]
    assert picked.texts.subset(np.array([2]))[0] == first.texts[11]


def test_distill_with_augment_trains_on_the_copies(teacher_dir, tmp_path):
    import edgekd

    common = dict(teacher=teacher_dir, data=make_rows(40), validation_data=make_rows(20, seed=1), student_layers="1",
                  epochs=1, batch_size=16, quiet=True, allow_poor_student=True, cache_dir=tmp_path / "cache")
    plain = edgekd.distill(out=tmp_path / "plain", log=None, **common)
    lines = []
    student = edgekd.distill(out=tmp_path / "augmented", augment=2, log=lines.append, **common)
    assert (plain.steps, student.steps) == (3, 8)  # ceil(40 / 16), ceil(3 x 40 / 16)
    assert any(line.startswith("augment: 40 training rows and 80 word-substituted copies") for line in lines)
    assert student.validation["accuracy"] is not None


def test_augment_refuses_a_bad_count(teacher_dir, tmp_path):
    import edgekd
    from conftest import assert_clean_error, run_cli, write_jsonl
    from edgekd.errors import UserError

    with pytest.raises(UserError, match="--augment must be a whole number of copies from 0 to 100, got -1"):
        edgekd.distill(teacher=teacher_dir, data=make_rows(40), student_layers="1", augment=-1,
                       out=tmp_path / "api", log=None, quiet=True)
    result = run_cli("distill", "--teacher", teacher_dir, "--data", write_jsonl(make_rows(40), tmp_path / "t.jsonl"),
                     "--augment", "101", "--out", tmp_path / "cli")
    assert_clean_error(result, "--augment must be a whole number of copies from 0 to 100, got 101")
    assert not (tmp_path / "cli").exists()
    assert "--augment" in run_cli("distill", "--help").output
