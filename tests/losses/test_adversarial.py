"""Gradient reversal, the DANN domain loss and entropy against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from dalib.errors import InputError
from dalib.losses import domain_adversarial, entropy, grad_reverse


def _softplus(z):
    return math.log1p(math.exp(z))


def test_grad_reverse_is_identity_forward_and_flips_gradient():
    x = torch.randn(5, 3, requires_grad=True)
    y = grad_reverse(x, coeff=0.3)
    torch.testing.assert_close(y, x)
    (y * torch.arange(15.0).reshape(5, 3)).sum().backward()
    torch.testing.assert_close(x.grad, -0.3 * torch.arange(15.0).reshape(5, 3))
    x.grad = None
    grad_reverse(x).sum().backward()  # default coefficient 1
    torch.testing.assert_close(x.grad, -torch.ones(5, 3))


def test_domain_adversarial_closed_form():
    ls = torch.tensor([0.0, 2.0, -1.0])
    lt = torch.tensor([[1.0], [-3.0]])
    # BCE(z, 1) = softplus(−z), BCE(z, 0) = softplus(z)
    src = (_softplus(0.0) + _softplus(-2.0) + _softplus(1.0)) / 3
    tgt = (_softplus(1.0) + _softplus(-3.0)) / 2
    assert domain_adversarial(ls, lt).item() == pytest.approx(0.5 * (src + tgt), rel=1e-6)
    w = torch.tensor([1.0, 0.0, 3.0])
    src_w = (_softplus(0.0) + 3 * _softplus(1.0)) / 4
    assert domain_adversarial(ls, lt, w).item() == pytest.approx(0.5 * (src_w + tgt), rel=1e-6)
    v = torch.tensor([2.0, 0.5])  # target weights (CDAN+E weighs both domains)
    tgt_v = (2 * _softplus(1.0) + 0.5 * _softplus(-3.0)) / 2.5
    assert domain_adversarial(ls, lt, w, v).item() == pytest.approx(0.5 * (src_w + tgt_v), rel=1e-6)
    assert domain_adversarial(ls, lt, weights_t=v).item() == pytest.approx(0.5 * (src + tgt_v), rel=1e-6)


def test_domain_adversarial_stable_and_perfect_discriminator():
    assert domain_adversarial(torch.tensor([100.0]), torch.tensor([-100.0])).item() == pytest.approx(0.0, abs=1e-30)
    big = domain_adversarial(torch.tensor([-100.0]), torch.tensor([100.0]))
    assert big.item() == pytest.approx(100.0, rel=1e-6)  # no overflow
    assert domain_adversarial(torch.zeros(4), torch.zeros(6)).item() == pytest.approx(math.log(2), rel=1e-6)


def test_entropy_closed_form():
    assert entropy(torch.zeros(3, 5)).item() == pytest.approx(math.log(5), rel=1e-6)
    assert entropy(torch.tensor([[50.0, 0.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-18)
    p = torch.tensor([0.2, 0.3, 0.5])
    expected = -(p * p.log()).sum().item()
    assert entropy(p.log().unsqueeze(0) + 7.0).item() == pytest.approx(expected, rel=1e-6)  # shift-invariant
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(entropy, (z,))


def test_entropy_of_a_masked_class_is_finite():
    """A −inf logit (a class masked out) has probability 0 and adds 0 to the entropy."""
    logits = torch.tensor([[0.0, -float("inf"), 1.0]], requires_grad=True)
    value = entropy(logits)
    torch.testing.assert_close(value, entropy(torch.tensor([[0.0, 1.0]])))
    value.backward()
    assert torch.isfinite(logits.grad).all()


def test_source_weights_must_match_the_source_logits():
    with pytest.raises(InputError, match=r"one weight per source logit \(5\), got shape \(1,\)"):
        domain_adversarial(torch.randn(5), torch.randn(5), torch.ones(1))
    ls, lt = torch.randn(4), torch.randn(3)
    weighted = domain_adversarial(ls, lt, torch.tensor([1.0, 2.0, 0.0, 1.0]))
    assert domain_adversarial(ls, lt, [1.0, 2.0, 0.0, 1.0]).item() == pytest.approx(weighted.item())  # a list too
    for bad in ([0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 1.0, 1.0], [1.0, float("nan"), 1.0, 1.0]):
        with pytest.raises(InputError, match="weights_s must be finite and non-negative, and not all zero"):
            domain_adversarial(ls, lt, torch.tensor(bad))
    with pytest.raises(InputError, match=r"weights_t must have one weight per target logit \(3\), got shape \(4,\)"):
        domain_adversarial(ls, lt, weights_t=torch.ones(4))
    with pytest.raises(InputError, match="weights_t must be finite and non-negative, and not all zero"):
        domain_adversarial(ls, lt, weights_t=torch.zeros(3))
    # (B, 1) weights are taken as the (B, 1) logits are; another shape with B elements was flattened
    assert domain_adversarial(ls, lt, torch.tensor([[1.0], [2.0], [0.0], [1.0]])).item() == pytest.approx(weighted.item())
    with pytest.raises(InputError, match=r"weights_s must have one weight per source logit \(4\), got shape \(2, 2\)"):
        domain_adversarial(ls, lt, torch.ones(2, 2))


def test_integer_logits_are_taken_as_numbers():
    z = torch.tensor([[2, 0, -1], [0, 0, 3]])
    assert entropy(z).item() == pytest.approx(entropy(z.float()).item())
    d = torch.tensor([3, -1])
    assert domain_adversarial(d, d).item() == pytest.approx(domain_adversarial(d.float(), d.float()).item())


@pytest.mark.parametrize("call, fragment", [
    (lambda: entropy(torch.randn(5)), "logits must be a non-empty (B, C) tensor, got shape (5,)"),
    (lambda: entropy(torch.randn(0, 10)), "got shape (0, 10)"),
    (lambda: domain_adversarial(torch.randn(4, 2), torch.randn(4)), "logits_s must be a non-empty (B,) or (B, 1)"),
    (lambda: domain_adversarial(torch.randn(4), torch.zeros(0, 1)), "logits_t must be a non-empty"),
    (lambda: domain_adversarial(torch.randn(4), [0.5]), "got a list"),
])
def test_logits_of_the_wrong_shape_are_an_input_error(call, fragment):
    with pytest.raises(InputError) as err:
        call()
    assert fragment in str(err.value)
