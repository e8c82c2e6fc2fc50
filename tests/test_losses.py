"""The objectives against hand computations (explicit loops, float64)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from npo_lib.config import Config
from npo_lib.data.views import IGNORE_INDEX
from npo_lib.objectives.primitives import ce, random_unit_vector, sequence_logprob, token_logprobs
from npo_lib.objectives.registry import (
    FORGET_TERMS,
    REGULARIZERS,
    LossHyper,
    LossSpec,
    composed_loss,
    parse_loss,
    term_value,
)
from npo_lib.objectives.terms import (
    act_loss,
    influence_loss,
    kl_loss,
    npo_loss,
    rmu_loss,
    satimp_loss,
    simnpo_loss,
    tnpo_loss,
    undial_loss,
    wga_loss,
)

B, T, V = 3, 7, 11
D = 5  # hidden size of the activations RMU / ACT read
M = IGNORE_INDEX


def hyper(**values: float) -> LossHyper:
    """The loss hyperparameters of the default config with ``values`` changed."""
    return LossHyper.from_config(dataclasses.replace(Config(), **values))


def make_batch(
    seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, T, V) and labels with a prompt, right padding and different target lengths."""
    torch.manual_seed(seed)
    logits = torch.randn(B, T, V, dtype=torch.float64).to(dtype)
    labels = torch.randint(0, V, (B, T))
    labels[0, :2] = M  # prompt of 2, then 5 targets
    labels[1, :3] = M  # prompt of 3, 2 targets, 2 padding
    labels[1, 5:] = M
    labels[2, :5] = M  # prompt of 5, 2 targets
    return logits, labels


# ----------------------------------------------------------------------------- hand references


def hand_log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    z = sum(math.exp(x - m) for x in row)
    return [x - m - math.log(z) for x in row]


def hand_token_logps(logits: torch.Tensor, labels: torch.Tensor) -> list[list[float | None]]:
    """out[b][t] = log p(labels[b, t+1] | logits[b, t]); None where the label is masked."""
    out = []
    for b in range(logits.shape[0]):
        row = []
        for t in range(logits.shape[1] - 1):
            y = int(labels[b, t + 1])
            row.append(None if y == M else hand_log_softmax(logits[b, t].tolist())[y])
        out.append(row)
    return out


def hand_log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def hand_seq_logps(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    return [sum(v for v in row if v is not None) for row in hand_token_logps(logits, labels)]


# ----------------------------------------------------------------------------- primitives


def test_token_logprobs_match_hand_and_gather():
    logits, labels = make_batch()
    logp, mask = token_logprobs(logits, labels)
    assert logp.shape == mask.shape == (B, T - 1)
    assert logp.dtype == torch.float64
    hand = hand_token_logps(logits, labels)
    for b in range(B):
        for t in range(T - 1):
            if hand[b][t] is None:
                assert mask[b, t] == 0 and logp[b, t] == 0
            else:
                assert mask[b, t] == 1
                assert logp[b, t].item() == pytest.approx(hand[b][t], abs=1e-12)
    # documented equivalent
    safe = labels[:, 1:].clamp_min(0)
    gathered = torch.gather(logits[:, :-1].log_softmax(-1), -1, safe[..., None])[..., 0]
    assert torch.allclose(logp, gathered * mask)


def test_causal_shift_ignores_last_logits_and_first_label():
    logits, labels = make_batch()
    logp, _ = token_logprobs(logits, labels)
    logits2, labels2 = logits.clone(), labels.clone()
    logits2[:, -1] += torch.randn(B, V, dtype=torch.float64)  # predicts nothing
    labels2[:, 0] = 3  # never predicted
    logp2, _ = token_logprobs(logits2, labels2)
    assert torch.equal(logp, logp2)


def test_sequence_logprob_and_ce_by_hand():
    logits, labels = make_batch()
    hand = hand_token_logps(logits, labels)
    seq = sequence_logprob(logits, labels)
    assert seq.shape == (B,)
    assert seq.tolist() == pytest.approx(hand_seq_logps(logits, labels), abs=1e-12)
    flat = [v for row in hand for v in row if v is not None]
    assert len(flat) == 9
    # token mean over the batch (not a mean of per-sequence means)
    assert ce(logits, labels).item() == pytest.approx(-sum(flat) / len(flat), abs=1e-12)
    assert ce(logits, labels).dim() == 0


def test_ce_without_targets_is_zero():
    logits, _ = make_batch()
    labels = torch.full((B, T), M)
    assert ce(logits, labels).item() == 0.0


# ----------------------------------------------------------------------------- forget terms


def test_ga_idk_finetune_are_signed_ce():
    logits, labels = make_batch()
    hp = hyper()
    value = ce(logits, labels)
    for name in ("GA", "GA1", "GA2", "GA3"):
        assert term_value(FORGET_TERMS[name], logits, labels, hp).item() == -value.item()
    for name in ("IDK1", "IDK2", "IDK3", "FINETUNE"):
        assert term_value(FORGET_TERMS[name], logits, labels, hp).item() == value.item()
    assert term_value(REGULARIZERS["GD"], logits, labels, hp).item() == value.item()


def test_npo_by_hand_and_closed_form():
    logits, labels = make_batch()
    beta = 0.3
    torch.manual_seed(1)
    ref = torch.randn(B, dtype=torch.float64) - 10.0
    seq = hand_seq_logps(logits, labels)
    deltas = [s - r for s, r in zip(seq, ref.tolist())]
    hand = -(2 / beta) * sum(hand_log_sigmoid(-beta * d) for d in deltas) / B
    value = npo_loss(logits, labels, ref, beta)
    assert value.dim() == 0
    assert value.item() == pytest.approx(hand, abs=1e-12)
    # (2/β) · mean log(1 + (p_θ/p_ref)^β), p = exp(sequence log-prob)
    closed = (
        (2 / beta)
        * sum(math.log(1 + (math.exp(s) / math.exp(r)) ** beta) for s, r in zip(seq, ref.tolist()))
        / B
    )
    assert value.item() == pytest.approx(closed, rel=1e-10)


def test_npo_at_reference_is_2_log2_over_beta():
    logits, labels = make_batch()
    ref = sequence_logprob(logits, labels).detach()
    for beta in (0.1, 1.0):
        value = npo_loss(logits, labels, ref, beta).item()
        assert value == pytest.approx(2 / beta * math.log(2), abs=1e-12)


def test_npo_rejects_misshaped_reference():
    logits, labels = make_batch()
    with pytest.raises(ValueError, match="ref_seq_logp has shape"):
        npo_loss(logits, labels, torch.zeros(B, 1, dtype=torch.float64), 0.1)


def test_simnpo_by_hand():
    logits, labels = make_batch()
    beta, gamma = 2.5, 0.7
    hand_tok = hand_token_logps(logits, labels)
    total = 0.0
    for row in hand_tok:
        vals = [v for v in row if v is not None]
        total += hand_log_sigmoid(-(beta / len(vals)) * sum(vals) - gamma)
    hand = -(2 / beta) * total / B
    assert simnpo_loss(logits, labels, beta, gamma).item() == pytest.approx(hand, abs=1e-12)
    # through the registry: β is simnpo_beta, not beta
    hp = hyper(simnpo_beta=beta, gamma=gamma)
    value = term_value(FORGET_TERMS["SimNPO"], logits, labels, hp)
    assert value.item() == pytest.approx(hand, abs=1e-12)


def ref_tokens(seed: int = 2) -> torch.Tensor:
    """A reference token log-prob table (B, T-1), 0 where the shifted label is masked."""
    logits, labels = make_batch(seed)
    return token_logprobs(logits, labels)[0]


def test_tnpo_by_hand():
    logits, labels = make_batch()
    ref = ref_tokens()
    beta = 0.5
    hand_tok = hand_token_logps(logits, labels)
    num, den = 0.0, 0
    for b in range(B):
        for t in range(T - 1):
            if hand_tok[b][t] is not None:
                num += hand_log_sigmoid(-beta * (hand_tok[b][t] - ref[b, t].item()))
                den += 1
    hand = -(2 / beta) * num / den
    assert tnpo_loss(logits, labels, ref, beta).item() == pytest.approx(hand, abs=1e-12)


def test_tnpo_gradient_at_reference_equals_ga_token_mean():
    logits, labels = make_batch()
    logits.requires_grad_(True)
    ref = token_logprobs(logits, labels)[0].detach()
    (g_tnpo,) = torch.autograd.grad(tnpo_loss(logits, labels, ref, 0.1), logits)
    (g_ga,) = torch.autograd.grad(-ce(logits, labels), logits)
    assert g_ga.abs().sum() > 0
    assert torch.allclose(g_tnpo, g_ga, atol=1e-12)


def test_influence_with_mask_weights_equals_tnpo_and_ignores_masked_weights():
    logits, labels = make_batch()
    ref = ref_tokens()
    _, mask = token_logprobs(logits, labels)
    tnpo = tnpo_loss(logits, labels, ref, 0.1)
    assert influence_loss(logits, labels, ref, mask, 0.1).item() == pytest.approx(tnpo.item())
    weights = mask + (1 - mask) * 5.0  # large weights on prompt/padding are multiplied away
    assert influence_loss(logits, labels, ref, weights, 0.1).item() == pytest.approx(tnpo.item())


def test_influence_weights_by_hand():
    logits, labels = make_batch()
    ref = ref_tokens()
    torch.manual_seed(3)
    weights = torch.rand(B, T - 1, dtype=torch.float64)
    beta = 0.2
    hand_tok = hand_token_logps(logits, labels)
    num = den = 0.0
    for b in range(B):
        for t in range(T - 1):
            if hand_tok[b][t] is not None:
                w = weights[b, t].item()
                num += w * hand_log_sigmoid(-beta * (hand_tok[b][t] - ref[b, t].item()))
                den += w
    hand = -(2 / beta) * num / den
    value = influence_loss(logits, labels, ref, weights, beta)
    assert value.item() == pytest.approx(hand, abs=1e-12)


def test_influence_zero_weights_is_exactly_zero_with_finite_grad():
    logits, labels = make_batch()
    logits.requires_grad_(True)
    ref = ref_tokens()
    weights = torch.zeros(B, T - 1, dtype=torch.float64)
    weights[1, -1] = 1.0  # only a padding position: masked away, Σw = 0
    value = influence_loss(logits, labels, ref, weights, 0.1)
    assert value.item() == 0.0
    assert value.grad_fn is not None
    (grad,) = torch.autograd.grad(value, logits)
    assert torch.isfinite(grad).all() and (grad == 0).all()


# ----------------------------------------------------------------------------- KL


def test_kl_zero_at_reference():
    logits, labels = make_batch()
    assert kl_loss(logits, labels, logits.clone()).item() == pytest.approx(0.0, abs=1e-14)


def test_kl_by_hand_and_masked_to_targets():
    logits, labels = make_batch()
    torch.manual_seed(4)
    ref_logits = torch.randn(B, T, V, dtype=torch.float64)
    num, den = 0.0, 0
    for b in range(B):
        for t in range(T - 1):
            if int(labels[b, t + 1]) == M:
                continue
            lq = hand_log_softmax(logits[b, t].tolist())
            lp = hand_log_softmax(ref_logits[b, t].tolist())
            num += sum(math.exp(p) * (p - q) for p, q in zip(lp, lq))
            den += 1
    value = kl_loss(logits, labels, ref_logits)
    assert value.item() == pytest.approx(num / den, abs=1e-12)
    # positions whose next label is masked (prompt, padding) and the last position do not count
    changed = ref_logits.clone()
    shifted_masked = torch.cat([labels[:, 1:] == M, torch.ones(B, 1, dtype=torch.bool)], 1)
    changed[shifted_masked] += 10 * torch.randn(int(shifted_masked.sum()), V, dtype=torch.float64)
    assert kl_loss(logits, labels, changed).item() == pytest.approx(value.item(), abs=1e-12)


# ----------------------------------------------------------------------------- registry


def test_parse_loss_and_views_needs():
    spec = parse_loss("NPO+GD")
    assert spec == LossSpec(FORGET_TERMS["NPO"], (REGULARIZERS["GD"],))
    assert spec.forget.name == "NPO" and spec.forget.view == "full"
    assert [r.name for r in spec.regularizers] == ["GD"]
    assert spec.views == ("full", "retain")
    assert parse_loss("GA").regularizers == () and parse_loss("GA").views == ("full",)
    assert parse_loss("IDK3+KL").views == ("idk3", "retain")
    assert parse_loss("GA2+GD+KL").views == ("answer", "retain")
    assert parse_loss("NPO3").views == ("cot",)
    assert parse_loss("INFLUENCE+KL").needs >= {"token_weights", "ref_token_logp", "ref_logits"}
    assert parse_loss("INFLUENCE+GD+KL").name == "INFLUENCE+GD+KL"
    assert parse_loss("FINETUNE").needs == set()


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("NPX+GD", "unknown part 'NPX'"),
        ("NPO+GDD", "unknown part 'GDD'"),
        ("GD", "regularizer, not a forget term"),
        ("GD+NPO", "FORGET\\[\\+REG...\\]"),
        ("NPO+GA", "forget term 'GA' after"),
        ("NPO+GD+GD", "'GD' appears twice"),
    ],
)
def test_parse_loss_errors(name: str, match: str):
    with pytest.raises(ValueError, match=match):
        parse_loss(name)


def test_unknown_part_lists_valid_names():
    with pytest.raises(ValueError) as err:
        parse_loss("npo")
    msg = str(err.value)
    for name in (*FORGET_TERMS, *REGULARIZERS):
        assert name in msg


def test_term_value_names_missing_extra():
    logits, labels = make_batch()
    with pytest.raises(ValueError, match="INFLUENCE needs token_weights"):
        term_value(FORGET_TERMS["INFLUENCE"], logits, labels, hyper(), ref_token_logp=ref_tokens())


def test_loss_hyper_comes_from_the_config_and_checks_its_values():
    """Each term takes its group's values by name (``npo.beta`` is NPO's ``beta``); defaults,
    ranges and flat aliases live in the group, once."""
    from npo_lib.errors import ConfigError

    hp = LossHyper.from_config(Config())
    assert hp.forget_coeff == 1.0 and hp.regularization_coeff == 1.0
    expect = {
        "NPO": {"beta": 0.1},
        "INFLUENCE": {"beta": 0.1},
        "SimNPO": {"beta": 2.5, "gamma": 0.0},
        "WGA": {"beta": 1.0},
        "SatImp": {"beta1": 5.0, "beta2": 1.0},
        "UNDIAL": {"beta": 10.0},
        "RMU": {"steering_coeff": 20.0},
        "GA": {},
    }
    for name, args in expect.items():
        assert hp.arguments(FORGET_TERMS[name]) == args, name
    assert hp.arguments(REGULARIZERS["ACT"]) == {"alpha": 1.0}
    assert hyper(beta=0.2, forget_coeff=2).forget_coeff == 2.0
    assert hyper(beta=0.2).arguments(FORGET_TERMS["TNPO"]) == {"beta": 0.2}
    assert LossHyper().arguments(FORGET_TERMS["NPO"]) == {"beta": 0.1}  # absent: its defaults
    with pytest.raises(ConfigError, match="beta must be > 0"):
        hyper(beta=0.0)
    with pytest.raises(ConfigError, match="satimp_beta1 must be >= 0"):
        hyper(satimp_beta1=-1.0)


def test_composed_loss_npo_gd():
    logits, labels = make_batch()
    retain_logits, retain_labels = make_batch(5)
    ref = torch.randn(B, dtype=torch.float64) - 10
    hp = hyper(beta=0.2, forget_coeff=0.5, regularization_coeff=3.0)
    total, logs = composed_loss(
        parse_loss("NPO+GD"),
        logits,
        labels,
        hp,
        retain_logits=retain_logits,
        retain_labels=retain_labels,
        ref_seq_logp=ref,
        token_weights=torch.ones(B, T - 1),  # not needed: ignored
    )
    npo = npo_loss(logits, labels, ref, 0.2)
    gd = ce(retain_logits, retain_labels)
    assert total.item() == pytest.approx(0.5 * npo.item() + 3.0 * gd.item(), abs=1e-12)
    assert set(logs) == {"forget/NPO", "reg/GD", "loss"}
    assert logs["forget/NPO"] == pytest.approx(npo.item())
    assert logs["reg/GD"] == pytest.approx(gd.item())
    assert logs["loss"] == pytest.approx(total.item())
    assert all(isinstance(v, float) for v in logs.values())


def test_composed_loss_kl_uses_retain_batch_and_requires_it():
    logits, labels = make_batch()
    retain_logits, retain_labels = make_batch(5)
    spec = parse_loss("GA+KL")
    total, logs = composed_loss(
        spec,
        logits,
        labels,
        hyper(),
        retain_logits=retain_logits,
        retain_labels=retain_labels,
        ref_logits=retain_logits.clone(),
    )
    assert logs["reg/KL"] == pytest.approx(0.0, abs=1e-14)
    assert total.item() == pytest.approx(-ce(logits, labels).item())
    with pytest.raises(ValueError, match="retain_logits"):
        composed_loss(spec, logits, labels, hyper())


def test_bf16_logits_give_finite_float32():
    logits, labels = make_batch(dtype=torch.bfloat16)
    logits.requires_grad_(True)
    extras = {
        "ref_seq_logp": torch.full((B,), -12.0),
        "ref_token_logp": ref_tokens().float(),
        "token_weights": torch.rand(B, T - 1),
        "ref_logits": torch.randn(B, T, V, dtype=torch.bfloat16),
        "ref_forget_logits": torch.randn(B, T, V, dtype=torch.bfloat16),
        "control_vec": random_unit_vector(D, 0),
        "ref_hidden": torch.randn(B, T, D, dtype=torch.bfloat16),
    }
    hidden = torch.randn(B, T, D, dtype=torch.bfloat16, requires_grad=True)
    hp = hyper()
    for term in (*FORGET_TERMS.values(), *REGULARIZERS.values()):
        value = term_value(term, logits, labels, hp, hidden=hidden, **extras)
        assert value.dtype == torch.float32, term.name
        assert value.dim() == 0 and torch.isfinite(value), term.name
        x = hidden if term.reads == "hidden" else logits
        (grad,) = torch.autograd.grad(value, x)
        assert grad.dtype == torch.bfloat16 and torch.isfinite(grad).all(), term.name
    logp, mask = token_logprobs(logits, labels)
    assert logp.dtype == mask.dtype == torch.float32


# ------------------------------------------------------------------- token-reweighted baselines


def _hand_reweighted(logits, labels, weight) -> float:
    """−Σ w(p)·CE / (number of target tokens), with explicit loops."""
    total, n = 0.0, 0
    for row in hand_token_logps(logits, labels):
        for lp in row:
            if lp is not None:
                total += weight(math.exp(lp)) * lp  # −w·CE = w·log p
                n += 1
    return total / n


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_wga_by_hand(beta):
    logits, labels = make_batch()
    hand = _hand_reweighted(logits, labels, lambda p: p**beta)
    assert wga_loss(logits, labels, beta).item() == pytest.approx(hand, abs=1e-12)
    assert term_value(
        FORGET_TERMS["WGA"], logits, labels, hyper(wga_beta=beta)
    ).item() == pytest.approx(hand, abs=1e-12)


def test_satimp_by_hand_with_open_unlearning_defaults():
    logits, labels = make_batch(1)
    hand = _hand_reweighted(logits, labels, lambda p: p**5 * (1 - p) ** 1)
    assert satimp_loss(logits, labels, 5.0, 1.0).item() == pytest.approx(hand, abs=1e-12)
    assert term_value(FORGET_TERMS["SatImp"], logits, labels, hyper()).item() == pytest.approx(
        hand, abs=1e-12
    )


REWEIGHTED = {
    "WGA": (lambda lg, lb: wga_loss(lg, lb, 1.0), lambda p: p),
    "SatImp": (lambda lg, lb: satimp_loss(lg, lb, 5.0, 1.0), lambda p: p**5 * (1 - p)),
}


@pytest.mark.parametrize("name", list(REWEIGHTED))
def test_reweighted_ga_gradients_treat_the_weights_as_constants(name):
    """The gradient is that of −mean w·CE with w = w(p) frozen: the weights are not
    differentiated."""
    loss_fn, weight = REWEIGHTED[name]
    logits, labels = make_batch(3)

    def grad(build) -> torch.Tensor:
        z = logits.clone().requires_grad_(True)
        build(z).backward()
        return z.grad

    def frozen(z, detach: bool):
        lp, m = token_logprobs(z, labels)
        w = weight(lp.detach().exp() if detach else lp.exp())
        return (w * m * lp).sum() / m.sum()

    g = grad(lambda z: loss_fn(z, labels))
    assert torch.allclose(g, grad(lambda z: frozen(z, True)), atol=1e-12)
    assert not torch.allclose(
        g, grad(lambda z: frozen(z, False)), atol=1e-6
    )  # what detaching changes


def test_undial_by_hand():
    logits, labels = make_batch(4)
    ref, _ = make_batch(5)
    beta = 3.0
    total, n = 0.0, 0
    for b in range(B):
        for t in range(T - 1):
            y = int(labels[b, t + 1])
            if y == M:
                continue
            z = [float(ref[b, t, v]) - (beta if v == y else 0.0) for v in range(V)]
            teacher = [math.exp(x) for x in hand_log_softmax(z)]
            logq = hand_log_softmax([float(x) for x in logits[b, t]])
            total += -sum(p * q for p, q in zip(teacher, logq))
            n += 1
    assert undial_loss(logits, labels, ref, beta).item() == pytest.approx(total / n, abs=1e-12)
    value = term_value(
        FORGET_TERMS["UNDIAL"], logits, labels, hyper(undial_beta=beta), ref_forget_logits=ref
    )
    assert value.item() == pytest.approx(total / n, abs=1e-12)
    # β = 0 and the model equal to its reference: the loss is the reference's entropy, its
    # gradient 0
    same = ref.clone().requires_grad_(True)
    undial_loss(same, labels, ref, 0.0).backward()
    assert same.grad.abs().max() < 1e-12


def test_simnpo_takes_the_papers_gamma_or_the_codes_delta():
    """γ = β·δ: δ = 1 at β = 3.5 (a published config) is γ = 3.5; setting both is refused."""
    from npo_lib.errors import ConfigError

    logits, labels = make_batch()
    by_delta = term_value(FORGET_TERMS["SimNPO"], logits, labels, hyper(simnpo_beta=3.5, delta=1.0))
    assert by_delta.item() == pytest.approx(simnpo_loss(logits, labels, 3.5, 3.5).item(), abs=1e-12)
    simnpo = FORGET_TERMS["SimNPO"]
    assert hyper(simnpo_beta=3.5, gamma=0.5).arguments(simnpo)["gamma"] == 0.5
    assert hyper().arguments(simnpo)["gamma"] == 0.0
    with pytest.raises(ConfigError, match="gamma or delta"):
        Config(gamma=0.5, delta=1.0)


# ------------------------------------------------------------------- RMU and its retain term


def _hand_activation_mse(hidden: torch.Tensor, target, labels: torch.Tensor) -> float:
    """mean_i (1/|T_i|) Σ_{t: label != -100} (1/d) Σ_k (h_itk − target_itk)², explicit loops;
    ``target(b, t, k)`` gives the target value."""
    per_example = []
    for b in range(hidden.shape[0]):
        total, n = 0.0, 0
        for t in range(hidden.shape[1]):
            if int(labels[b, t]) == M:
                continue
            d = hidden.shape[2]
            total += sum((float(hidden[b, t, k]) - target(b, t, k)) ** 2 for k in range(d)) / d
            n += 1
        per_example.append(total / max(n, 1))
    return sum(per_example) / len(per_example)


def test_rmu_by_hand():
    """Unshifted target positions (the activation at each target token), mean per example, then
    over examples; the pad positions of example 1 and the prompts do not enter."""
    _, labels = make_batch()
    torch.manual_seed(7)
    hidden = torch.randn(B, T, D, dtype=torch.float64)
    u = random_unit_vector(D, 3).double()
    c = 6.5
    hand = _hand_activation_mse(hidden, lambda b, t, k: c * float(u[k]), labels)
    assert rmu_loss(hidden, labels, u, c).item() == pytest.approx(hand, abs=1e-12)
    value = term_value(
        FORGET_TERMS["RMU"], None, labels, hyper(rmu_steering_coeff=c), hidden=hidden, control_vec=u
    )
    assert value.item() == pytest.approx(hand, abs=1e-12)
    # a change at a prompt or padding position changes nothing; at a target position it does
    moved = hidden.clone()
    moved[1, 0] += 10.0  # prompt of example 1
    moved[1, 6] += 10.0  # padding of example 1
    assert rmu_loss(moved, labels, u, c).item() == pytest.approx(hand, abs=1e-12)
    moved[1, 3] += 1.0  # its first target token
    assert rmu_loss(moved, labels, u, c).item() != pytest.approx(hand, abs=1e-6)
    # an example without target tokens contributes 0 to the mean over examples (not NaN)
    empty = labels.clone()
    empty[2] = M
    hand_empty = _hand_activation_mse(hidden, lambda b, t, k: c * float(u[k]), empty)
    assert rmu_loss(hidden, empty, u, c).item() == pytest.approx(hand_empty, abs=1e-12)
    e2 = _hand_activation_mse(
        hidden[2:], lambda b, t, k: c * float(u[k]), labels[2:]
    )  # example 2 alone
    assert hand_empty == pytest.approx(hand - e2 / 3, abs=1e-12)  # still divided by the 3 examples


def test_random_unit_vector_is_seeded_unit_and_positive():
    u = random_unit_vector(64, 0)
    assert u.shape == (64,) and u.dtype == torch.float32
    assert u.norm().item() == pytest.approx(1.0, abs=1e-6) and (u >= 0).all()  # torch.rand: [0, 1)ᵈ
    assert torch.equal(u, random_unit_vector(64, 0)) and not torch.equal(
        u, random_unit_vector(64, 1)
    )


def test_act_by_hand_and_zero_at_the_reference():
    _, labels = make_batch(1)
    torch.manual_seed(8)
    hidden = torch.randn(B, T, D, dtype=torch.float64)
    ref = torch.randn(B, T, D, dtype=torch.float64)
    alpha = 3.0
    hand = alpha * _hand_activation_mse(hidden, lambda b, t, k: float(ref[b, t, k]), labels)
    assert act_loss(hidden, labels, ref, alpha).item() == pytest.approx(hand, abs=1e-12)
    value = term_value(
        REGULARIZERS["ACT"], None, labels, hyper(rmu_alpha=alpha), hidden=hidden, ref_hidden=ref
    )
    assert value.item() == pytest.approx(hand, abs=1e-12)
    same = ref.clone().requires_grad_(True)
    act_loss(same, labels, ref, alpha).backward()
    assert act_loss(ref, labels, ref, alpha).item() == 0.0 and same.grad.abs().max() == 0


def test_rmu_and_act_gradients_by_hand_and_targets_detached():
    """∂RMU/∂h_itk = 2 (h_itk − c u_k) / (d · |T_i| · B) on target positions, 0 elsewhere; the
    control vector and the reference activations receive no gradient (they are constants)."""
    _, labels = make_batch(2)
    torch.manual_seed(9)
    h = torch.randn(B, T, D, dtype=torch.float64, requires_grad=True)
    u = random_unit_vector(D, 1).double().requires_grad_(True)
    ref = torch.randn(B, T, D, dtype=torch.float64, requires_grad=True)
    c, alpha = 4.0, 2.0
    (rmu_loss(h, labels, u, c) + act_loss(h, labels, ref, alpha)).backward()
    assert u.grad is None and ref.grad is None
    mask = labels != M
    n = mask.sum(-1)
    grad = h.grad
    h, u, ref = h.detach(), u.detach(), ref.detach()
    for b in range(B):
        for t in range(T):
            for k in range(D):
                expect = 0.0
                if mask[b, t]:
                    scale = 2.0 / (D * int(n[b]) * B)
                    expect = scale * (float(h[b, t, k]) - c * float(u[k])) + alpha * scale * (
                        float(h[b, t, k]) - float(ref[b, t, k])
                    )
                assert grad[b, t, k].item() == pytest.approx(expect, abs=1e-12)


def test_rmu_compositions():
    """RMU+GD (open-unlearning's RMU: NLL on retain) and the paper's RMU+ACT: the total is the
    weighted sum, each term reading its own input (activations or logits)."""
    logits, labels = make_batch()
    retain_logits, retain_labels = make_batch(5)
    torch.manual_seed(10)
    fh, rh, ref = (torch.randn(B, T, D, dtype=torch.float64) for _ in range(3))
    u = random_unit_vector(D, 0).double()
    hp = hyper(rmu_steering_coeff=5.0, rmu_alpha=7.0, forget_coeff=0.5, regularization_coeff=2.0)
    spec = parse_loss("RMU+GD+ACT")
    assert (
        spec.reads_hidden
        and spec.needs == {"control_vec", "ref_hidden"}
        and spec.views == ("full", "retain")
    )
    assert not parse_loss("NPO+GD").reads_hidden and parse_loss("GA+ACT").reads_hidden
    total, logs = composed_loss(
        spec,
        logits,
        labels,
        hp,
        retain_logits=retain_logits,
        retain_labels=retain_labels,
        forget_hidden=fh,
        retain_hidden=rh,
        control_vec=u,
        ref_hidden=ref,
    )
    rmu, gd, act = (
        rmu_loss(fh, labels, u, 5.0),
        ce(retain_logits, retain_labels),
        act_loss(rh, retain_labels, ref, 7.0),
    )
    assert total.item() == pytest.approx(
        0.5 * rmu.item() + 2.0 * (gd.item() + act.item()), abs=1e-12
    )
    assert set(logs) == {"forget/RMU", "reg/GD", "reg/ACT", "loss"}
    with pytest.raises(ValueError, match="RMU reads hidden"):
        term_value(FORGET_TERMS["RMU"], logits, labels, hp, control_vec=u)


# ----------------------------------------------------------------------------- declaring a term


def test_a_term_is_checked_against_its_group_when_it_registers():
    """The function's keywords after its inputs are its group's fields, by name: a mismatch
    fails at import, not at the first step."""
    from dataclasses import dataclass

    from npo_lib.objectives.catalog import Params, Term, hp
    from npo_lib.objectives.losses.wga import WGAParams

    @dataclass
    class Demo(Params):
        alpha: float = hp(1.0, "a demo weight", ge=0)

    def good(logits, labels, ref_logits, alpha):
        return alpha * ce(logits, labels)

    def bad(logits, labels, ref_logits, beta):
        return beta * ce(logits, labels)

    assert Term("X", good, "full", needs=("ref_logits",), params=Demo).hyper_args == ("alpha",)
    with pytest.raises(TypeError, match="neither inputs nor fields"):
        Term("X", bad, "full", needs=("ref_logits",), params=Demo)
    with pytest.raises(TypeError, match="lacks the inputs"):
        Term("X", good, "full", needs=("ref_logits", "token_weights"), params=Demo)
    with pytest.raises(TypeError, match="block"):
        Term("X", good, "full", needs=("ref_logits",), params=WGAParams, reads="hidden")


def test_a_group_declared_after_the_schema_fails_loudly():
    from dataclasses import dataclass

    from npo_lib.objectives.catalog import Params, hp, param_group

    with pytest.raises(RuntimeError, match="registered after npo_lib.config.schema.Config"):

        @param_group("late", "too late")
        @dataclass
        class Late(Params):
            x: float = hp(1.0, "x")


def test_objectives_reference_lists_every_term_with_its_hyperparameters_and_inputs():
    from npo_lib.training.describe import objectives_reference

    docs = {d["name"]: d for d in objectives_reference()}
    assert set(docs) == {*FORGET_TERMS, *REGULARIZERS}
    npo = docs["NPO"]
    assert npo["kind"] == "forget" and npo["equation"] == FORGET_TERMS["NPO"].doc
    assert npo["hyperparameters"] == [
        {
            "key": "npo.beta",
            "alias": "beta",
            "default": 0.1,
            "range": "> 0",
            "help": "NPO / TNPO / INFLUENCE temperature β",
            "argument": True,
        }
    ]
    assert [i["name"] for i in npo["inputs"]] == ["ref_seq_logp"] and npo["inputs"][0]["doc"]
    rmu = {h["key"]: h for h in docs["RMU"]["hyperparameters"]}
    assert rmu["rmu.layer"]["default"] == 7 / 32 and not rmu["rmu.layer"]["argument"]
    assert docs["ACT"]["kind"] == "regularizer" and docs["ACT"]["group"] == "rmu"
    assert docs["GD"]["hyperparameters"] == [] and docs["GD"]["inputs"] == []
