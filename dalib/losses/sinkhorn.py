"""Entropic optimal transport: the Sinkhorn cost and divergence, and exact/entropic plans.

Conventions (geomloss'): cost ``C(x, y) = ‖x − y‖^p / p``, ``ε = blur^p``, the entropic
cost is the value of

.. math:: \\mathrm{OT}_\\varepsilon(a, b) = \\min_{P \\in \\Pi(a, b)}
    \\langle P, C \\rangle + \\varepsilon\\, \\mathrm{KL}(P \\,\\|\\, a \\otimes b),

and the (debiased) Sinkhorn divergence is
``S_ε(a, b) = OT_ε(a, b) − ½ OT_ε(a, a) − ½ OT_ε(b, b)`` (Feydy et al., AISTATS 2019),
which is ≥ 0 (up to rounding), = 0 iff the two measures coincide, and tends to the unregularised OT cost
as ``blur → 0``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from dalib._arrays import check_dense
from dalib.errors import BackendError, InputError, OutOfRangeError, warn_outside_dalib
from dalib.kernels._checks import _dtype_name, check_pair, check_weights, outside_autocast, plain_tensor
from dalib.kernels.backends import import_quietly, resolve_backend, with_keops_fallback
from dalib.kernels.sinkhorn_ops import CostOps
from dalib.kernels.softmin import cost_matrix, softmin_unchecked

__all__ = ["SinkhornResult", "epsilon_schedule", "ot_plan", "sinkhorn", "sinkhorn_solve"]


class SinkhornResult(NamedTuple):
    """What :func:`sinkhorn_solve` returns.

    ``value``: the entropic cost ``OT_ε(a, b)`` or, with ``debias``, the divergence
    ``S_ε(a, b)`` (scalar, differentiable); ``f`` (N,) and ``g`` (M,): the dual potentials
    of ``OT_ε(a, b)`` (detached); ``n_iter``: Sinkhorn iterations run (ε-scaling included);
    ``marginal_error``: ``‖Pᵀ1 − b‖₂`` of the plan ``P`` of the returned potentials (its
    rows are exact), POT's stopping criterion (with ``tol``, a ``RuntimeWarning`` says when
    ``max_iter`` ran out first).
    """

    value: Tensor
    f: Tensor
    g: Tensor
    n_iter: int
    marginal_error: float


def _diameter(x: Tensor, y: Tensor) -> float:
    """Diagonal of the bounding box of both clouds (geomloss' ``max_diameter``)."""
    lo = torch.minimum(x.min(0).values, y.min(0).values)  # (D,)
    hi = torch.maximum(x.max(0).values, y.max(0).values)  # (D,)
    return float((hi - lo).pow(2).sum().sqrt())


def epsilon_schedule(p: float, diameter: float, blur: float, scaling: float) -> list[float]:
    """ε-scaling (annealing) from ``diameter^p`` down to ``blur^p``, one ratio
    ``scaling^p`` per step — the same list as geomloss' ``epsilon_schedule``."""
    diameter = max(diameter, blur)
    start, stop, step = p * math.log(diameter), p * math.log(blur), p * math.log(scaling)
    count = max(0, math.ceil((stop - start) / step))  # as np.arange(start, stop, step)
    steps = [math.exp(start + k * step) for k in range(count)]
    return [diameter**p] + steps + [blur**p]


def _check_args(
    blur: float, p: float, scaling: float, tol: float | None, max_iter: int, diameter: float | None = None
) -> None:
    if not (_number(blur, "blur") > 0 and math.isfinite(float(blur))):
        raise InputError(f"blur must be positive and finite, got {blur}")
    if diameter is not None and not (_number(diameter, "diameter") > 0 and math.isfinite(float(diameter))):
        raise InputError(f"diameter must be positive and finite (or None: measured on the data), got {diameter}")
    if not (_number(p, "p") >= 1 and math.isfinite(float(p))):
        raise InputError(f"p must be >= 1 and finite, got {p}")
    if not 0 < _number(scaling, "scaling") < 1:
        raise InputError(f"scaling must be in (0, 1), got {scaling}")
    if tol is not None and not _number(tol, "tol") > 0:
        raise InputError(f"tol must be positive, got {tol}")
    if not (_number(max_iter, "max_iter") >= 1 and math.isfinite(float(max_iter))):
        raise InputError(f"max_iter must be >= 1 and finite, got {max_iter}")


def _number(value: object, name: str) -> float:
    """``value`` as a float, or an :class:`InputError` naming ``name``."""
    if isinstance(value, (str, bytes)):
        raise InputError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None


def _marg_err(w: Tensor, u_old: Tensor, u_new: Tensor, eps: float) -> float:
    """‖w ⊙ (exp((u_old − u_new)/ε) − 1)‖₂: the marginal violation on that side."""
    return float((w * torch.expm1((u_old - u_new) / eps)).norm())


def _differentiated(t: Tensor) -> bool:
    """Whether a derivative with respect to ``t`` is being taken: backward's (it requires grad,
    with grad mode on) or a forward mode's (a dual tensor, ``torch.func.jvp``'s), which a
    ``requires_grad`` test had missed: their derivatives lost the terms that only it gated."""
    return (t.requires_grad and torch.is_grad_enabled()) or not plain_tensor(t)


def _derivative_levels(tensors: tuple[Tensor, ...]) -> int:
    """How many derivatives of the value are being taken at once: one for each ``torch.func``
    derivative transform (``grad``, ``vjp``, ``jvp``) that is active, one if beneath them the
    caller's autograd records the inputs (they require grad, in grad mode as it was outside the
    transforms), and one if they are the caller's forward-mode dual tensors. Two or more take a
    derivative of a derivative: ``grad`` of ``grad``, ``jvp`` of ``grad``, ``autograd.grad`` of
    a ``torch.func.grad``, a dual tensor through ``torch.func.grad``, forward over reverse. A
    plain call's ``create_graph=True`` is seen later (:class:`_FirstOrderOnly`). 0 while
    ``torch.compile`` traces, or where torch has no interpreter stack to read."""
    if torch.compiler.is_compiling():
        return 0
    try:
        from torch._functorch.pyfunctorch import (
            retrieve_all_functorch_interpreters, temporarily_clear_interpreter_stack,
        )
        unwrap, wrapped = torch._C._functorch.get_unwrapped, torch._C._functorch.is_functorch_wrapped_tensor
    except (ImportError, AttributeError):
        return 0
    transforms = [i for i in retrieve_all_functorch_interpreters() if i.key().name in ("Grad", "Jvp")]
    # the grad mode outside the transforms: the outermost grad transform's on entering it
    # (it turns grad mode on within); vmap and jvp leave it as it was
    grads = [i for i in transforms if i.key().name == "Grad"]
    grad_mode = getattr(grads[0], "prev_grad_mode", torch.is_grad_enabled)() if grads else torch.is_grad_enabled()
    bases = []
    for t in tensors:
        while wrapped(t):
            t = unwrap(t)
        bases.append(t)
    with temporarily_clear_interpreter_stack():  # a dual tensor reads as one outside the transforms only
        reverse = grad_mode and any(t.requires_grad for t in bases)
        forward = any(torch.autograd.forward_ad.unpack_dual(t).tangent is not None for t in bases)
    return len(transforms) + reverse + forward


def _twice_the_gradient(x: Tensor) -> Tensor:
    """``x`` itself (``2x − x`` is exact in floating point), through which twice the gradient
    flows back to ``x``."""
    return 2 * x - x.detach() if _differentiated(x) else x


def _dual_value(a: Tensor, b: Tensor, t: Tensor, f: Tensor, g: Tensor, eps: float) -> Tensor:
    """The dual objective at the detached potentials ``f = t.detach()``, ``g``:

    ``⟨a, f⟩ + ⟨b, g⟩ − ε⟨a ⊗ b, exp((f ⊕ g − C)/ε) − 1⟩`` with the double sum written
    through ``t = softmin(x, y, log b + g/ε)`` (which carries the graph to x, y, b). Its
    value is ``⟨a, f⟩ + ⟨b, g⟩``; its gradients are those of ``OT_ε`` (envelope theorem):
    ``f`` w.r.t. ``a``, ``g`` w.r.t. ``b``, ``Σ_j P_ij ∇_x C(x_i, y_j)`` w.r.t. ``x_i``.
    """
    return (
        (a * f).sum()
        + (b * g).sum()
        - eps * (a * torch.exp((f - t) / eps)).sum()
        + eps * a.sum() * b.sum()
    )


def _solve(
    x: Tensor,
    y: Tensor,
    a: Tensor | None,
    b: Tensor | None,
    blur: float,
    p: float,
    debias: bool,
    scaling: float,
    tol: float | None,
    max_iter: int,
    diameter: float | None,
    backend: str,
    want_error: bool,
) -> SinkhornResult:
    x, y = check_pair(x, y)
    a = check_weights(a, x.shape[0], x, "a")
    b = check_weights(b, y.shape[0], y, "b")
    _check_args(blur, p, scaling, tol, max_iter, diameter)
    if _derivative_levels((x, y, a, b)) > 1:
        raise InputError(SECOND_ORDER + " (nested torch.func transforms, autograd or forward AD around a torch.func "
                         "transform, forward over reverse; where only the torch.func derivative is wanted, call it "
                         "under torch.no_grad(), or with inputs and parameters that do not require grad) use mmd or "
                         "coral")
    p = int(p) if float(p) == int(p) else float(p)

    def run(name: str) -> SinkhornResult:
        return _solve_on(x, y, a, b, blur, p, debias, scaling, tol, max_iter, diameter, backend, want_error, name)

    op = "sinkhorn" if tol is None else "sinkhorn-tol"
    return with_keops_fallback(backend, resolve_backend(backend, x, y, op=op, others=(a, b)), run)


def _solve_on(
    x: Tensor,
    y: Tensor,
    a: Tensor,
    b: Tensor,
    blur: float,
    p: float,
    debias: bool,
    scaling: float,
    tol: float | None,
    max_iter: int,
    diameter: float | None,
    backend: str,
    want_error: bool,
    name: str,
) -> SinkhornResult:
    diam = _diameter(x.detach(), y.detach()) if diameter is None else float(diameter)
    try:
        top = max(diam, blur) ** p  # the largest cost, the first ε of the schedule
        ratio = top / float(blur) ** p  # the largest cost over the last ε: the iterations' C/ε
    except (OverflowError, ZeroDivisionError):
        top = ratio = math.inf
    largest = torch.finfo(x.dtype).max
    wider = ", or use float64" if largest < torch.finfo(torch.float64).max else ""
    if not top < largest:  # every cost near it would overflow too
        raise OutOfRangeError(f"diameter {diam:g} (blur {blur:g}) with p = {p:g} overflows "
                         f"{_dtype_name(x)} costs: scale the points (or the diameter){wider}")
    if not ratio < largest:
        raise OutOfRangeError(f"diameter {diam:g} over blur {blur:g} with p = {p:g} overflows {_dtype_name(x)} "
                         f"costs over ε: raise blur, or scale the points{wider}")
    eps_list = epsilon_schedule(p, diam, float(blur), float(scaling))
    eps = eps_list[-1]
    if diam > 0 and eps * torch.finfo(x.dtype).eps > 1e-3 * diam**p:
        # the potentials are ε·log(·) of sums near 1: their rounding, ε times the dtype's, swamps
        # costs of diameter^p (float32 at blur 1e4 over points 4 apart: the value read 0.0)
        warn_outside_dalib(f"sinkhorn: blur {blur:g} is so far above the points' diameter {diam:.3g} that the "
                           f"{_dtype_name(x)} value loses its digits (the gradient keeps them): lower blur, or use "
                           "float64", RuntimeWarning)
    if not 1.0 / eps < largest:  # the iterations multiply by 1/ε
        raise OutOfRangeError(f"blur {blur:g} with p = {p:g} makes ε = {eps:.3g}, whose inverse overflows {_dtype_name(x)}: "
                         f"scale the points up (and blur with them){wider}")

    with torch.no_grad():
        xd, yd, ad, bd = x.detach(), y.detach(), a.detach(), b.detach()
        loga, logb = ad.log(), bd.log()  # (N,), (M,)
        xy = CostOps(xd, yd, p, name)
        xx = CostOps(xd, xd, p, name, symmetric=True) if debias else None
        yy = CostOps(yd, yd, p, name, symmetric=True) if debias else None
        zn, zm = torch.zeros_like(ad), torch.zeros_like(bd)

        # initialisation at the largest ε, then one (averaged) Jacobi step per ε
        f, g = xy.update(zn, zm, ad, bd, loga, logb, eps_list[0])
        faa = xx.update(zn, zn, ad, ad, loga, loga, eps_list[0], cols=False)[0] if xx else None
        gbb = yy.update(zm, zm, bd, bd, logb, logb, eps_list[0], cols=False)[0] if yy else None
        n_iter = 0
        for e in eps_list:
            ft, gt = xy.update(f, g, ad, bd, loga, logb, e)
            f, g = 0.5 * (f + ft), 0.5 * (g + gt)
            if xx is not None:
                faa = 0.5 * (faa + xx.update(faa, faa, ad, ad, loga, loga, e, cols=False)[0])
                gbb = 0.5 * (gbb + yy.update(gbb, gbb, bd, bd, logb, logb, e, cols=False)[0])
            n_iter += 1

        err = math.nan
        if tol is None:
            # one exact column update before the final row update: the pair (f, g) of the
            # value is then one full alternating Sinkhorn step (0.5% → 0.2% from the
            # converged value at scaling 0.5, for one more iteration); the same for the
            # symmetric terms, so that S_ε(a, a) stays exactly 0
            f_cols, g = xy.update(f, g, ad, bd, loga, logb, eps)
            if xx is not None:
                faa = xx.update(faa, faa, ad, ad, loga, loga, eps, cols=False)[0]
                gbb = yy.update(gbb, gbb, bd, bd, logb, logb, eps, cols=False)[0]
        else:
            # at the final ε: alternate exact row / column updates until the column
            # marginal error of the plan (rows exact) falls under tol (POT's criterion);
            # the symmetric problems of the debiasing, separately, to the same tolerance
            f, g, it, err = xy.solve_to_tolerance(f, g, ad, bd, loga, logb, eps, tol, max_iter)
            f_cols = f
            extra = it
            if xx is not None:
                faa, it_a, err_a = xx.solve_symmetric_to_tolerance(faa, ad, loga, eps, tol, max_iter)
                gbb, it_b, err_b = yy.solve_symmetric_to_tolerance(gbb, bd, logb, eps, tol, max_iter)
                extra, err = max(extra, it_a, it_b), max(err, err_a, err_b)
            n_iter += extra
            if not err < tol:
                warn_outside_dalib(f"sinkhorn: not converged after max_iter={max_iter} iterations at the final ε "
                                   f"(marginal error {err:.3g} > tol {tol:g}): raise max_iter or blur", RuntimeWarning)

    # final extrapolation, with autograd: f ← softmin(log b + g/ε) (its rows become exact).
    # One reduction per term: with an automatic choice, the dense loop's large problems
    # run it blocked (no N×M autograd graph).
    name = resolve_backend(backend, x, y, others=(a, b)) if name == "dense" else name
    xx = yy = None  # free the cached costs before the autograd pass
    if not want_error:
        xy = None
    t = softmin_unchecked(x, yd, b.log() + g / eps, eps, p, name)  # (N,)
    f = t.detach()
    value = _dual_value(a, b, t, f, g, eps)
    if _differentiated(y):
        # y's gradient, Σ_i P_ij ∇_y C(x_i, y_j), from a plan whose columns are exact: the
        # column update from the row potential f_cols (one exact row update from the
        # schedule's last potentials, as the debiasing's own terms have). Through t, whose
        # rows are exact and columns not, it was 3% off the converged gradient at blur 0.2,
        # and it did not vanish between identical clouds. The term's value is 0.
        s = softmin_unchecked(y, xd, loga + f_cols / eps, eps, p, name)  # (M,)
        value = value + (bd * (s - s.detach())).sum()
    if want_error:  # the column error of the final plan (its rows are exact)
        with torch.no_grad():
            gt = xy.update(f, g, ad, bd, loga, logb, eps, rows=False)[1]
            err = _marg_err(bd, g, gt, eps)
    if debias:
        # A symmetric problem's point gradient is twice its row term, Σ_j P_ij ∇₁C(x_i, x_j),
        # when its plan is symmetric, as at the optimum: the rows carry it, the columns are
        # detached (geomloss does the same). Through both arguments, the plan of a schedule
        # that stopped short of the optimum (not yet symmetric) left a gradient between two
        # identical clouds, where the divergence has its minimum.
        taa = softmin_unchecked(_twice_the_gradient(x), x.detach(), a.log() + faa / eps, eps, p, name, True)  # (N,)
        tbb = softmin_unchecked(_twice_the_gradient(y), y.detach(), b.log() + gbb / eps, eps, p, name, True)  # (M,)
        value_aa = _dual_value(a, a, taa, taa.detach(), faa, eps)
        value_bb = _dual_value(b, b, tbb, tbb.detach(), gbb, eps)
        value = value - 0.5 * (value_aa + value_bb)
    if value.requires_grad and all(plain_tensor(t) for t in (x, y, a, b)):  # (torch.func's grad: see the class)
        value = _FirstOrderOnly.apply(value)
    return SinkhornResult(value, f, g.detach(), n_iter, float(err))


SECOND_ORDER = ("sinkhorn gives first-order gradients only (the envelope theorem's, at fixed potentials): for a "
                "gradient of a gradient")


class _FirstOrderOnly(torch.autograd.Function):
    """The value as it is. Its gradient is the envelope theorem's, with the potentials held
    fixed: right at first order, but a gradient of it (``create_graph=True``) would miss how
    the potentials move with the points, and be wrong without a word (200% off on five
    points): refused, on every backend. Under the ``torch.func`` transforms, whose ``grad``
    builds its first derivative with a graph whether or not a second follows, the value is
    left as it is; nested ones (``grad`` of ``grad``, ``hessian``) are refused before solving."""

    @staticmethod
    def forward(ctx, value: Tensor) -> Tensor:  # type: ignore[override]
        return value.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        if torch.is_grad_enabled():  # the backward of a create_graph=True call
            raise InputError(SECOND_ORDER + " (create_graph=True) use mmd or coral")
        return grad


@outside_autocast
def sinkhorn(
    x: Tensor,
    y: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    blur: float = 0.05,
    p: float = 2,
    debias: bool = True,
    scaling: float = 0.5,
    tol: float | None = None,
    max_iter: int = 1000,
    diameter: float | None = None,
    backend: str = "auto",
) -> Tensor:
    r"""Sinkhorn divergence (``debias=True``) or entropic OT cost between weighted clouds.

    .. math::
        \mathrm{OT}_\varepsilon(a, b) = \min_{P \ge 0,\ P1 = a,\ P^\top 1 = b}
            \sum_{ij} P_{ij} \frac{\|x_i - y_j\|^p}{p} + \varepsilon\,\mathrm{KL}(P \,\|\, a \otimes b),
        \qquad \varepsilon = \mathrm{blur}^p,

    .. math::
        S_\varepsilon(a, b) = \mathrm{OT}_\varepsilon(a, b)
            - \tfrac12 \mathrm{OT}_\varepsilon(a, a) - \tfrac12 \mathrm{OT}_\varepsilon(b, b).

    Solved in the log domain with ε-scaling (Feydy et al., "Interpolating between Optimal
    Transport and MMD using Sinkhorn Divergences", AISTATS 2019; the algorithm of
    geomloss): ε goes from ``diameter^p`` down to ``blur^p`` by a factor ``scaling^p``
    per (averaged, symmetric) Sinkhorn iteration. With ``tol``, iterations go on at the
    final ε until the marginal error ``‖P^T 1 − b‖₂`` is below ``tol`` (at most
    ``max_iter`` more), the stopping rule of POT. Without ``tol`` (the default, a training
    loss's setting) the schedule stops at the final ε: the value then approximates the
    converged one, as geomloss's does, always below it, by how much depending on the points' spread
    and overlap (from 0.01% to over 20% in our trials, 8 to 120 points in 2-d, blur 0.1 to 0.5);
    pass ``tol`` for the converged value. Weights
    summing to 1 up to rounding are divided by their sum. The value is the dual objective
    at the potentials, whose gradients (envelope theorem, one extrapolation step with autograd)
    are those of the cost w.r.t. the points ``x``, ``y`` and the weights ``a``, ``b``
    (the dual potentials; weights must be > 0 for weight gradients). Each side's point
    gradient comes from a plan exact on its own side's marginal (x's rows, y's columns: one
    more N×M reduction when ``y`` requires grad, about 15% of a forward and backward pass).
    The gradient is first-order only: a gradient of it (``create_graph=True``, nested ``torch.func`` transforms, autograd
    or forward AD around a ``torch.func`` transform, forward over reverse) is refused; so a ``torch.func.grad`` alone
    runs under ``torch.no_grad()``, or on inputs (and a network's parameters) that do not require grad.

    ``x`` (N, D), ``y`` (M, D); ``a`` (N,), ``b`` (M,) non-negative weights summing to 1
    (uniform if None); ``p`` ≥ 1 (1 and 2 are the usual); ``diameter``: the largest
    distance, where ε-scaling starts (default: the bounding box's diagonal);
    ``backend``: see :func:`dalib.kernels.resolve_backend`. Returns a scalar tensor.
    """
    return _solve(x, y, a, b, blur, p, debias, scaling, tol, max_iter, diameter, backend, False).value


@outside_autocast
def sinkhorn_solve(
    x: Tensor,
    y: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    blur: float = 0.05,
    p: float = 2,
    debias: bool = True,
    scaling: float = 0.5,
    tol: float | None = None,
    max_iter: int = 1000,
    diameter: float | None = None,
    backend: str = "auto",
) -> SinkhornResult:
    """:func:`sinkhorn` with the dual potentials, the iteration count and the final
    marginal error (one extra reduction): a :class:`SinkhornResult`."""
    return _solve(x, y, a, b, blur, p, debias, scaling, tol, max_iter, diameter, backend, True)


@outside_autocast
def ot_plan(
    x: Tensor | None = None,
    y: Tensor | None = None,
    a: Tensor | None = None,
    b: Tensor | None = None,
    method: str | None = None,
    blur: float = 0.05,
    p: float = 2,
    max_iter: int = 100000,
    tol: float = 1e-9,
    *,
    cost: Tensor | None = None,
    reg: float | None = None,
) -> Tensor:
    r"""Transport plan of a small problem, through POT (exact or entropic).

    ``method="emd"``: the exact plan of ``min_P ⟨P, C⟩`` s.t. ``P1 = a, Pᵀ1 = b``
    (network simplex, ``ot.emd``); ``method="sinkhorn"``: the entropic plan of
    ``⟨P, C⟩ + ε KL(P ‖ a⊗b)`` (``ot.sinkhorn``, log domain, stopping at marginal error
    ``tol``). Flamary et al., "POT: Python Optimal Transport", JMLR 2021.

    The cost is either ``C_ij = ‖x_i − y_j‖^p / p`` for points ``x`` (N, D), ``y`` (M, D),
    with ``ε = blur^p``; or a given matrix ``cost=`` (N, M) (a joint feature/label cost, as
    DeepJDOT's), with ``ε = reg``. ``method=None`` means ``"sinkhorn"`` when ``reg`` is
    given and ``"emd"`` otherwise. ``a`` (N,), ``b`` (M,): weights summing to 1 (uniform if
    None). Returns the plan (N, M) on the input's device and in its dtype (float32 for
    float16/bfloat16 inputs, as the losses compute them), without gradient; computed in
    float64 numpy with dense matrices: for small problems (mini-batches).
    """
    if cost is not None:
        if x is not None or y is not None:
            raise InputError("give either points x, y or a cost matrix, not both")
        if isinstance(cost, Tensor):
            check_dense(cost, "cost", InputError)
        if not isinstance(cost, Tensor) or cost.dim() != 2 or 0 in cost.shape:
            shape = tuple(cost.shape) if isinstance(cost, Tensor) else type(cost).__name__
            raise InputError(f"cost must be a non-empty 2-D (N, M) tensor, got {shape}")
        if not bool(torch.isfinite(cost).all()):  # a cost computed from values that grew too large (inf, inf − inf)
            raise OutOfRangeError("cost holds NaN or infinite values")
        if cost.dtype in (torch.float16, torch.bfloat16):  # as the losses compute them
            like = cost.float()
        else:
            like = cost if cost.is_floating_point() else cost.to(torch.get_default_dtype())
        n, m = cost.shape
    else:
        if x is None or y is None:
            raise InputError("ot_plan needs points x and y, or cost=")
        x, y = check_pair(x, y)
        like, (n, m) = x, (x.shape[0], y.shape[0])
    a = check_weights(a, n, like, "a")
    b = check_weights(b, m, like, "b")
    if method is None:
        method = "sinkhorn" if reg is not None else "emd"
    if method not in ("emd", "sinkhorn"):
        raise InputError(f"method must be 'emd' or 'sinkhorn', got {method!r}")
    if reg is not None and not (_number(reg, "reg") > 0 and math.isfinite(float(reg))):
        raise InputError(f"reg must be positive and finite, got {reg}")
    _check_args(blur, p, 0.5, tol, max_iter)
    try:
        ot = import_quietly("ot")
    except ImportError as exc:
        raise BackendError(f"ot_plan needs POT (pip install pot): {exc}") from exc
    with torch.no_grad():
        if cost is not None:
            c = cost.detach().double().cpu().numpy()  # (N, M)
        else:
            c = cost_matrix(x.detach().double(), y.detach().double(), p).cpu().numpy()  # (N, M)
    if not np.isfinite(c).all():
        raise OutOfRangeError(f"the cost ‖x − y‖^p / p overflows float64 at p={p}: lower p or scale the points down")
    an = a.detach().double().cpu().numpy()
    bn = b.detach().double().cpu().numpy()
    an, bn = an / an.sum(), bn / bn.sum()
    if method == "emd":
        plan = ot.emd(an, bn, c, numItermax=int(max_iter))
    else:
        eps = float(reg) if reg is not None else float(blur) ** p
        name = "reg" if reg is not None else f"blur^p = {blur}^{p}"
        # the dual potentials are of the cost's size, kept to float64's relative precision: past
        # (largest |C|) / ε = 1/machine-ε, the exponents (f + g − C)/ε of the plan hold no digit
        largest = float(np.abs(c).max())
        if not eps > 0 or largest / eps > 1.0 / np.finfo(np.float64).eps:
            raise OutOfRangeError(f"ε = {name} = {eps:.3g} is too small for the cost (largest {largest:.3g}) "
                             "in float64: raise it, or take the exact plan (method='emd' here; reg=0 in the ot method)")
        plan = ot.sinkhorn(an, bn, c, eps, method="sinkhorn_log", numItermax=int(max_iter), stopThr=tol)
    return torch.as_tensor(plan, dtype=like.dtype, device=like.device)  # (N, M)
