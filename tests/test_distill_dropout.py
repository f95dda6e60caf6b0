"""CPU dropout masks drawn in bulk (edgekd/training/dropout.py): the distribution, the
scaling, the gradient, reproducibility, and that the mode reaches every dropout of a model."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

from edgekd.training.dropout import LEVELS, CpuDropout, dropout

N = 1 << 20


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_drop_rate_and_scale(p):
    torch.manual_seed(0)
    y = dropout(torch.ones(N), p)
    dropped_levels = round(p * LEVELS)
    assert abs(dropped_levels / LEVELS - p) <= 0.5 / LEVELS
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / N)  # within 5 standard errors
    kept = y[y != 0]
    assert torch.all(kept == LEVELS / (LEVELS - dropped_levels))  # exact inverse keep probability
    assert abs(y.double().mean().item() - 1.0) < 5 * math.sqrt(p / (1 - p) / N)  # unbiased


def test_four_uniforms_of_one_word_are_independent():
    """Each random word feeds four neighbouring elements: pairs within a word and across
    words are both dropped at p squared, and a run of four all dropped at p to the fourth."""
    p = 0.5
    torch.manual_seed(1)
    dropped = (dropout(torch.ones(N), p) == 0).view(-1, 4).double()
    tolerance = 5 * math.sqrt(p * p / (N // 4))
    for a, b in [(0, 1), (1, 2), (2, 3), (0, 3)]:
        assert abs((dropped[:, a] * dropped[:, b]).mean().item() - p * p) < tolerance
    across = (dropped[:-1, 3] * dropped[1:, 0]).mean().item()
    assert abs(across - p * p) < tolerance
    assert abs(dropped.prod(dim=1).mean().item() - p ** 4) < 5 * math.sqrt(p ** 4 / (N // 4))


def test_gradient_is_the_mask():
    torch.manual_seed(2)
    x = torch.randn(64, 33, requires_grad=True)  # an element count that is not a multiple of 4
    y = dropout(x, 0.25)
    y.backward(torch.ones_like(y))
    scale = LEVELS / (LEVELS - round(0.25 * LEVELS))
    expected = (y != 0).float() * scale
    assert torch.equal(x.grad, expected)
    assert torch.allclose(y, x.detach() * expected)


def test_seeded_and_edge_probabilities():
    x = torch.randn(1000)
    torch.manual_seed(3)
    first = dropout(x, 0.3)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.3), first)
    assert not torch.equal(dropout(x, 0.3), first)  # the generator moved on
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    inplace = x.clone()
    torch.manual_seed(3)
    assert dropout(inplace, 0.3, inplace=True) is inplace
    assert torch.equal(inplace, first)


def test_mode_reaches_modules_and_functional_dropout():
    torch.manual_seed(4)
    x = torch.randn(4096)
    with CpuDropout():
        module = torch.nn.Dropout(0.2)(x)
        functional = F.dropout(x, 0.2, training=True)
        kept = F.dropout(x, 0.2, training=False)
        inplace = x.clone()
        F.dropout(inplace, 0.2, training=True, inplace=True)
        alpha = F.alpha_dropout(x, 0.2, training=True)  # another variant: passes through
    scale = LEVELS / (LEVELS - round(0.2 * LEVELS))
    for y in (module, functional, inplace):
        assert torch.allclose(y[y != 0], x[y != 0] * scale)  # this module's exact scale
    assert kept is x
    assert not torch.equal(module, functional)
    assert (alpha == 0).sum() == 0  # alpha dropout sets dropped values to a non-zero constant


def test_mode_in_a_real_encoder():
    """A training-mode forward of a tiny BERT under the mode is reproducible from the seed,
    draws different masks from PyTorch's own (so every dropout went through the mode),
    and eval outputs are untouched."""
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, num_labels=3, hidden_dropout_prob=0.3,
                        attention_probs_dropout_prob=0.3, attn_implementation="eager")
    torch.manual_seed(5)
    model = BertForSequenceClassification(config)
    ids = torch.randint(0, 99, (3, 11))

    def logits(mode) -> torch.Tensor:
        torch.manual_seed(6)
        with mode():
            return model(input_ids=ids).logits

    model.train()
    fast = logits(CpuDropout)
    assert torch.equal(fast, logits(CpuDropout))
    torch.manual_seed(6)
    assert not torch.allclose(fast, model(input_ids=ids).logits)
    # Only dropout differs: with every probability at 0 the two paths agree exactly.
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # the attention's functional dropout reads its module's p
    assert torch.equal(logits(CpuDropout), model(input_ids=ids).logits)
    model.eval()
    with torch.no_grad():
        assert torch.equal(logits(CpuDropout), model(input_ids=ids).logits)


def test_loops_use_the_mode_only_where_pytorch_masks_are_serial(monkeypatch):
    import edgekd.training.dropout as module

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(module, "masks_are_serial", lambda: True)
    assert isinstance(module.training_masks(cpu), CpuDropout)
    assert not isinstance(module.training_masks(cpu, compiled=True), CpuDropout)
    assert not isinstance(module.training_masks(cuda), CpuDropout)
    monkeypatch.setattr(module, "masks_are_serial", lambda: False)
    assert not isinstance(module.training_masks(cpu), CpuDropout)
