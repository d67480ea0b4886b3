"""Each deep plugin's loss is its paper's composition of dalib's losses, with every
hyperparameter in its place: checked term by term against the formula written out here, and
its gradient against the reference's (a term that stops reaching one domain's features
would still train, and could still beat source-only on an easy shift)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

import dalib
from dalib import Outputs, Progress
from dalib.losses import coral, domain_adversarial, mmd, ot_plan
from dalib.models import build_model
from tests._support.batches import random_batch

N_S, N_T, D, K = 12, 10, 16, 4


def _setup(name, seed=0, **config):
    torch.manual_seed(seed)
    cls = dalib.get_method(name)
    model = build_model("mlp", (D,), K, bottleneck_dim=8)
    method = cls(cls.Config(**config), model)
    batch = random_batch(N_S, N_T, D, K, seed)
    g = torch.Generator().manual_seed(seed + 1)
    feats = [torch.randn(n, 8, generator=g).requires_grad_() for n in (N_S, N_T)]
    logits = [torch.randn(n, K, generator=g).requires_grad_() for n in (N_S, N_T)]
    return method, batch, Outputs(feats[0], feats[1], logits[0], logits[1])


def _grads(value, out):
    """The gradient of ``value`` with respect to each of ``out``'s tensors (zeros where none)."""
    grads = torch.autograd.grad(value, list(out), allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(out, grads)]


def _f(value):
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _fresh(out):
    return Outputs(*(t.detach().clone().requires_grad_() for t in out))


def test_dann_reverses_the_discriminators_gradient_into_both_domains():
    gamma, trade_off = 3.0, 0.7
    method, batch, out = _setup("dann", gamma=gamma, trade_off=trade_off, hidden=16, hidden_layers=1)
    progress = Progress(30, 100)
    losses = method.loss(batch, out, progress)
    coeff = 2 / (1 + math.exp(-gamma * 0.3)) - 1  # Ganin et al.'s λ_p at p = 0.3
    assert _f(losses["grl"]) == pytest.approx(coeff, rel=1e-6)
    got = _grads(losses["total"], out)

    ref_out = _fresh(out)
    d = method.discriminator(torch.cat([ref_out.feat_s, ref_out.feat_t])).squeeze(1)
    dom = domain_adversarial(d[:N_S], d[N_S:])
    cls = F.cross_entropy(ref_out.logits_s, batch.y_s)
    assert _f(losses["domain"]) == pytest.approx(_f(dom), rel=1e-6)
    assert _f(losses["total"]) == pytest.approx(_f(cls + trade_off * dom), rel=1e-6)
    d_feat_s, d_feat_t, _, _ = _grads(dom, ref_out)
    # the features get the discriminator's gradient reversed and scaled by λ_p: both domains
    torch.testing.assert_close(got[0], -coeff * trade_off * d_feat_s)
    torch.testing.assert_close(got[1], -coeff * trade_off * d_feat_t)
    assert got[0].abs().sum() > 0 and got[1].abs().sum() > 0


@pytest.mark.parametrize("estimator", ["biased", "unbiased", "linear"])
@pytest.mark.parametrize("on_logits", [False, True])
def test_dan_is_the_mmd_its_settings_name(estimator, on_logits):
    trade_off = 0.4
    method, batch, out = _setup("mmd", estimator=estimator, on_logits=on_logits, trade_off=trade_off)
    losses = method.loss(batch, out, Progress(5, 100))
    ref_out = _fresh(out)
    align = mmd(ref_out.feat_s, ref_out.feat_t, estimator=estimator, backend="dense")
    if on_logits:  # the head on the features: out.logits_* are the head on a Dropout-masked copy
        head = method.model.head
        align = align + mmd(head(ref_out.feat_s), head(ref_out.feat_t), estimator=estimator, backend="dense")
    total = F.cross_entropy(ref_out.logits_s, batch.y_s) + trade_off * align
    assert _f(losses["mmd"]) == pytest.approx(_f(align), rel=1e-6)
    got = _grads(losses["total"], out)
    for g, want in zip(got, _grads(total, ref_out)):
        torch.testing.assert_close(g, want)
    assert got[0].abs().sum() > 0 and got[1].abs().sum() > 0  # both domains' features are aligned
    assert got[3].abs().sum() == 0  # the masked target logits enter no term


def test_deep_coral_aligns_the_bottleneck_covariances():
    trade_off = 2.5
    method, batch, out = _setup("coral", trade_off=trade_off)
    losses = method.loss(batch, out, Progress(5, 100))
    ref_out = _fresh(out)
    align = coral(ref_out.feat_s, ref_out.feat_t)
    assert _f(losses["coral"]) == pytest.approx(_f(align), rel=1e-6)
    total = F.cross_entropy(ref_out.logits_s, batch.y_s) + trade_off * align
    got = _grads(losses["total"], out)
    for g, want in zip(got, _grads(total, ref_out)):
        torch.testing.assert_close(g, want)
    assert got[0].abs().sum() > 0 and got[1].abs().sum() > 0 and got[3].abs().sum() == 0


def test_the_estimators_differ_on_these_features():
    """So that the test above tells them apart."""
    _, _, out = _setup("mmd")
    values = {e: _f(mmd(out.feat_s, out.feat_t, estimator=e, backend="dense")) for e in ("biased", "unbiased", "linear")}
    assert len({round(v, 6) for v in values.values()}) == 3, values


def test_deepjdot_transports_the_joint_cost_of_the_paper():
    alpha, lambda_t = 0.3, 0.5
    method, batch, out = _setup("ot", alpha=alpha, lambda_t=lambda_t)
    losses = method.loss(batch, out, Progress(5, 100))
    ref_out = _fresh(out)
    # C_ij = α‖g(x_i^s) − g(x_j^t)‖² + λ_t·CE(y_i^s, f(g(x_j^t))), one entry at a time; f is the
    # head on the features (out.logits_t is the head on a Dropout-masked copy)
    feat = ((ref_out.feat_s[:, None, :] - ref_out.feat_t[None, :, :]) ** 2).sum(-1)
    logits_t = method.model.head(ref_out.feat_t)  # (N_T, K)
    label = torch.stack([F.cross_entropy(logits_t[j].expand(N_S, K), batch.y_s, reduction="none")
                         for j in range(N_T)], dim=1)
    cost = alpha * feat + lambda_t * label
    plan = ot_plan(cost=cost.detach(), reg=method.config.reg or None)
    transport = (plan.to(cost.dtype) * cost).sum()
    assert _f(losses["transport"]) == pytest.approx(_f(transport), rel=1e-5)
    total = F.cross_entropy(ref_out.logits_s, batch.y_s) + transport
    got = _grads(losses["total"], out)
    for g, want in zip(got, _grads(total, ref_out)):
        torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-6)
    assert got[3].abs().sum() == 0  # the masked target logits enter no term


def test_l2sp_pulls_the_given_weights_to_their_start_and_the_new_ones_to_zero():
    alpha, beta = 0.3, 0.05
    method, batch, out = _setup("finetune", l2sp=alpha, l2sp_beta=beta)
    named = dict(method.model.named_parameters())
    given = [n for n in named if n.startswith("backbone.")]
    assert given and len(given) < len(named)
    method.anchors = {n: named[n].detach() + 0.1 * torch.randn_like(named[n]) for n in given}
    losses = method.loss(batch, out, Progress(5, 100))
    pull = sum(((named[n] - method.anchors[n]) ** 2).sum() for n in given)
    new = sum((p**2).sum() for n, p in named.items() if n not in method.anchors)
    assert _f(losses["l2sp"]) == pytest.approx(_f(0.5 * alpha * pull + 0.5 * beta * new), rel=1e-6)


def test_the_weighted_source_loss_is_the_weighted_mean_of_the_cross_entropies():
    method, batch, out = _setup("source_only")
    w = torch.rand(N_S, generator=torch.Generator().manual_seed(1)) * 3
    ce = F.cross_entropy(out.logits_s, batch.y_s, reduction="none")
    value = method.source_loss(batch._replace(w_s=w), out)
    assert _f(value) == pytest.approx(_f((w * ce).sum() / w.sum()), rel=1e-6)
    # KMM's weights have mean 1 only up to ε: the loss does not scale with them
    assert _f(method.source_loss(batch._replace(w_s=7 * w), out)) == pytest.approx(_f(value), rel=1e-6)
    assert _f(method.source_loss(batch, out)) == pytest.approx(_f(ce.mean()), rel=1e-6)


@pytest.mark.parametrize("name, term, config", [("dann", "domain", {"hidden_layers": 0}), ("ot", "transport", {})])
def test_a_source_sample_of_weight_zero_counts_in_no_term(name, term, config):
    """Source weights (KMM's, or a subclass's) reach the adaptation term too, not only the
    classifier's: a sample of weight 0 moved elsewhere, with another label, changes nothing.
    (dann's discriminator without BatchNorm here, whose batch statistics would join the rows.)"""
    method, batch, out = _setup(name, **config)
    g = torch.Generator().manual_seed(7)
    moved = out._replace(feat_s=torch.cat([torch.randn(4, 8, generator=g) * 3, out.feat_s[4:]]))
    relabelled = batch._replace(y_s=torch.cat([(batch.y_s[:4] + 1) % K, batch.y_s[4:]]))
    w = torch.cat([torch.zeros(4), torch.rand(N_S - 4, generator=g) + 0.5])
    before = method.loss(batch._replace(w_s=w), out, Progress(50, 100))
    after = method.loss(relabelled._replace(w_s=w), moved, Progress(50, 100))
    for key in ("cls", term):
        assert _f(after[key]) == pytest.approx(_f(before[key]), rel=1e-5), key
    # (the same change, weighted as the others, moves the term: the check can fail)
    unweighted = method.loss(relabelled._replace(w_s=torch.ones(N_S)), moved, Progress(50, 100))
    assert _f(unweighted[term]) != pytest.approx(_f(method.loss(batch._replace(w_s=torch.ones(N_S)), out,
                                                               Progress(50, 100))[term]), rel=1e-3)


@pytest.mark.parametrize("hidden_layers", [0, 1, 2])
def test_the_discriminator_is_the_papers_stack(hidden_layers):
    """``hidden_layers`` blocks of Linear, BatchNorm and ReLU of width ``hidden``, then one
    logit: with none, a logistic regressor on the features (the Amazon suite's)."""
    from dalib_plugins.dann import discriminator

    net = discriminator(8, 5, hidden_layers)
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU"] * hidden_layers + ["Linear"]
    widths = [(m.in_features, m.out_features) for m in net if isinstance(m, torch.nn.Linear)]
    assert widths == ([(8, 5)] + [(5, 5)] * (hidden_layers - 1) + [(5, 1)] if hidden_layers else [(8, 1)])

