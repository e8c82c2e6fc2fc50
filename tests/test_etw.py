"""ETW, entropy-guided token weighting (arXiv:2604.17785), against a hand computation, and the
proof that an objective is one file: its module alone registers the term, its config group and
its line in ``npo losses``."""

from __future__ import annotations

import math

import pytest
import torch

from npo_lib.data.views import IGNORE_INDEX as M
from npo_lib.objectives.losses.etw import ETWParams, etw_loss
from npo_lib.objectives.terms import ga_loss

B, T, V = 3, 7, 11


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, T, V) and labels with prompts, right padding and different target lengths."""
    torch.manual_seed(seed)
    logits = 2 * torch.randn(B, T, V, dtype=torch.float64)
    labels = torch.randint(0, V, (B, T))
    labels[0, :2] = M
    labels[1, :3] = M
    labels[1, 5:] = M
    labels[2, :5] = M
    return logits, labels


def hand_etw(logits: torch.Tensor, labels: torch.Tensor, beta: float) -> float:
    """−Σ H^β CE / Σ H^β over the target tokens, H the entropy of the prediction, by loops."""
    num = den = 0.0
    for b in range(B):
        for t in range(T - 1):
            y = int(labels[b, t + 1])
            if y == M:
                continue
            z = [float(v) for v in logits[b, t]]
            top = max(z)
            total = sum(math.exp(v - top) for v in z)
            p = [math.exp(v - top) / total for v in z]
            entropy = -sum(q * math.log(q) for q in p)
            num += entropy**beta * math.log(p[y])  # −w·CE = w·log p
            den += entropy**beta
    return num / den


@pytest.mark.parametrize("beta", [1.0, 0.5, 2.0])
def test_etw_by_hand(beta):
    logits, labels = batch()
    assert etw_loss(logits, labels, beta).item() == pytest.approx(
        hand_etw(logits, labels, beta), abs=1e-12
    )


def test_beta_zero_and_uniform_entropy_are_gradient_ascent():
    logits, labels = batch(1)
    assert etw_loss(logits, labels, 0.0).item() == pytest.approx(ga_loss(logits, labels).item())
    flat = torch.zeros(B, T, V, dtype=torch.float64)  # every prediction uniform: H = log V
    assert etw_loss(flat, labels, 1.0).item() == pytest.approx(ga_loss(flat, labels).item())


def test_the_weights_are_constants_of_the_gradient():
    """∂ETW/∂z = Σ w ∂log p / Σ w with w = H^β held fixed: the entropy is not pushed."""
    logits, labels = batch(2)
    x = logits.clone().requires_grad_(True)
    etw_loss(x, labels, 1.0).backward()
    y = logits.clone().requires_grad_(True)
    logp = y[:, :-1].log_softmax(-1)
    mask = labels[:, 1:] != M
    tok = logp.gather(-1, labels[:, 1:].clamp_min(0)[..., None])[..., 0]
    with torch.no_grad():
        w = -(logp.exp() * logp).sum(-1) * mask
    ((w * tok * mask).sum() / w.sum()).backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=0, atol=1e-12)


def test_certain_predictions_give_zero_not_nan():
    _, labels = batch(3)
    logits = torch.full((B, T, V), -1e4, dtype=torch.float64)
    logits[..., 0] = 0.0  # p = 1 on token 0 everywhere: H = 0 at every position
    x = logits.requires_grad_(True)
    value = etw_loss(x, labels, 1.0)
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(x.grad).all()


def test_bf16_logits_give_finite_float32():
    logits, labels = batch(4)
    x = logits.to(torch.bfloat16).requires_grad_(True)
    value = etw_loss(x, labels, 1.0)
    (grad,) = torch.autograd.grad(value, x)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad).all()


def test_one_file_registers_the_term_its_group_and_its_documentation(capsys):
    from npo_lib.cli import main
    from npo_lib.config import annotated_yaml, load_config
    from npo_lib.errors import ConfigError
    from npo_lib.objectives.registry import FORGET_TERMS, LossHyper, parse_loss
    from npo_lib.training.describe import objectives_reference

    term = FORGET_TERMS["ETW"]
    assert term.fn is etw_loss and term.params is ETWParams and term.needs == ()
    assert parse_loss("ETW+GD").name == "ETW+GD"
    cfg = load_config(["forget_loss=ETW+GD", "etw.beta=2"])
    assert LossHyper.from_config(cfg).arguments(term) == {"beta": 2.0}
    assert "etw:" in annotated_yaml(cfg)
    with pytest.raises(ConfigError, match="etw.beta must be >= 0"):
        load_config(["etw.beta=-0.5"])
    (doc,) = [d for d in objectives_reference() if d["name"] == "ETW"]
    assert doc["paper"].endswith("arXiv:2604.17785") and doc["inputs"] == []
    assert [h["key"] for h in doc["hyperparameters"]] == ["etw.beta"]
    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    assert any(line.split()[:1] == ["ETW"] and term.doc in line for line in out.splitlines())
    assert "etw.beta = 1 (>= 0): entropy exponent" in out
