"""Optimal-transport mapping of source samples onto the target (Courty, Flamary, Tuia &
Rakotomamonjy, TPAMI 2017, "Optimal Transport for Domain Adaptation").

A plan ``P`` (n_s, n_t) between the uniform empirical measures, for the cost
``C_ij = ‖xs_i − xt_j‖² / s`` (s = 1, or the median / max of the cost when ``norm`` asks),
and the barycentric mapping ``T(xs_i) = Σ_j P_ij xt_j / Σ_j P_ij``:

* ``reg=None``: exact OT, ``min ⟨P, C⟩`` (POT ``ot.emd``);
* ``reg=ε``: entropic OT, ``min ⟨P, C⟩ − ε H(P)`` (Sinkhorn);
* ``reg_cl=η``: the class-regularised plan of the paper (OT-LpLq),
  ``min ⟨P, C⟩ − ε H(P) + η Σ_j Σ_c ‖P_{I_c, j}‖_1^p`` with p = ½ over the source
  samples I_c of class c (a target sample should receive mass from one class only). The
  concave penalty is handled by majorisation-minimisation: each outer step solves an
  entropic problem with the linearised penalty ``C + η W``,
  ``W_ij = p (Σ_{i'∈I_c(i)} P_i'j + δ)^{p−1}`` (δ = 1e-3), as POT's ``sinkhorn_lpl1_mm``.

For moderate sizes (n_s·n_t ≤ :data:`POT_MAX_ENTRIES`) the plans come from POT (dense,
float64). Above, the entropic problems are solved in the log domain on the potentials
through :func:`dalib.kernels.softmin` (its ``blocked`` or ``keops`` backend, never
``dense``) and the mapping is computed by blocks of rows, so no n_s × n_t matrix is formed
(exact OT stays POT-only).

Out-of-sample samples (``transform(X)`` with X other than the fitted Xs): the entropic
plan's continuous extension ``T(x) = Σ_j softmax_j(g_j/ε − C(x, xt_j)/ε) xt_j`` (the
default of POT's ``SinkhornTransport`` since POT 0.9.4); for the exact and class-regularised plans, the
displacement of the nearest fitted source sample (Ferradans et al. 2014, POT's
"ferradans").
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dalib._arrays import cpu_by_default
from dalib.errors import ConfigError, InputError, warn_outside_dalib
from dalib.kernels._checks import outside_autocast
from dalib.kernels.backends import import_quietly
from dalib.kernels.distance import nearest_rows
from dalib.shallow._checks import as_groups, check_choice, check_narrowed, check_positive, fit_pair, like_input
from dalib.shallow._params import Params
from dalib.shallow._sinkhorn import barycentric_map, group_softmin, log_sinkhorn

__all__ = ["OTMapping", "POT_MAX_ENTRIES"]

#: ``backend="auto"`` uses POT's dense solvers up to this many plan entries (4096²).
POT_MAX_ENTRIES = 4096 * 4096
#: Exact OT's network simplex runs at most max(EMD_MIN_ITER, EMD_ITER_PER_ENTRY · n_s·n_t,
#: max_iter) iterations (POT's own default, 100000, stops some 2000 x 2000 problems short)
EMD_MIN_ITER = 100_000
EMD_ITER_PER_ENTRY = 10
#: The norm="median" of a cost too large to form is estimated on a fixed random subset
#: of at most this many source and this many target samples.
MEDIAN_SUBSET = 2048
_LPL1_P = 0.5
_LPL1_DELTA = 1e-3

_BACKENDS = ("auto", "pot", "dense", "blocked", "keops")


class OTMapping(Params):
    """Map source samples onto the target through an optimal-transport plan.

    Parameters
    ----------
    reg : entropic regularisation ε (on the normalised cost); None for exact OT.
    reg_cl : class regularisation η (needs ``ys`` in :meth:`fit`); None for none.
    norm : None, "median" or "max": divide the squared-Euclidean cost by its median or max
        (POT's ``norm``), which makes ``reg`` scale-free; default "median".
    max_iter : Sinkhorn iterations (per outer step when ``reg_cl`` is set); for exact OT, a
        floor on the network simplex's iterations (at least 10·n_s·n_t, which the problems
        we met finish well within).
    tol : Sinkhorn's stopping threshold on the error of the target marginal: POT's
        ``stopThr`` on the POT path (the L2 norm, checked every 10 iterations), the L1 norm
        on the log-domain path, where it is raised to 16 × the machine epsilon of ``dtype``
        (1.9e-6 in float32), the floor of what that precision can reach.
    max_outer_iter : majorisation-minimisation steps of the class-regularised variant
        (POT's ``SinkhornLpl1Transport(max_iter=10)``).
    backend : "auto", "pot" (dense POT plans, float64), or "dense", "blocked", "keops"
        (log-domain solver through :func:`dalib.kernels.softmin` with that backend).
    dtype : "float32" or "float64", the precision of the log-domain solver (POT plans are
        always float64).

    Attributes after :meth:`fit`: ``mapped_`` (n_s, d) the transported source samples
    (numpy), ``coupling_`` (n_s, n_t) numpy plan or None (log-domain path), ``f_``/``g_``
    potentials of the (last) entropic problem or None, ``cost_scale_`` (s), ``backend_``
    (the one chosen: an automatic "log-keops" whose formula fails to compile falls back to
    blocked reductions with a ``RuntimeWarning``), ``n_iter_`` (Sinkhorn iterations in total), ``marginal_error_`` (of the last Sinkhorn
    solve; None for exact OT), ``converged_`` (that error within ``tol``; for exact OT, that the
    network simplex reached the optimum; a ``RuntimeWarning`` says when not), ``reg_``/``reg_cl_`` (the settings the plan was
    fitted with, which :meth:`transform` uses), ``fit_time_``.
    """

    def __init__(
        self,
        reg: float | None = 1.0,
        reg_cl: float | None = None,
        norm: str | None = "median",
        max_iter: int = 1000,
        tol: float = 1e-9,
        max_outer_iter: int = 10,
        backend: str = "auto",
        dtype: str = "float32",
    ) -> None:
        self.reg = reg
        self.reg_cl = reg_cl
        self.norm = norm
        self.max_iter = max_iter
        self.tol = tol
        self.max_outer_iter = max_outer_iter
        self.backend = backend
        self.dtype = dtype

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        check_positive(self.reg, "reg", allow_none=True)
        check_positive(self.reg_cl, "reg_cl", allow_none=True)  # None, not 0, for no class regularisation
        check_choice(self.norm, "norm", (None, "median", "max"))
        for name in ("max_iter", "max_outer_iter"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")
        check_positive(self.tol, "tol", allow_zero=True)
        check_choice(self.backend, "backend", _BACKENDS)
        check_choice(self.dtype, "dtype", ("float32", "float64"))
        if self.reg is None and self.reg_cl is not None:
            raise ConfigError("reg_cl needs an entropic plan: set reg to a number")
        if self.reg is None and self.backend not in ("auto", "pot"):
            raise ConfigError(f"exact OT (reg=None) is solved by POT only, not backend={self.backend!r}")

    # ------------------------------------------------------------------- fit
    @outside_autocast
    @cpu_by_default
    def fit(self, Xs: Any, Xt: Any, ys: Any = None) -> OTMapping:
        """Compute the plan between ``Xs`` (n_s, d) and ``Xt`` (n_t, d) and the mapped
        source samples; ``ys`` (n_s,) source labels (integers or strings) are needed
        when ``reg_cl`` is set, and not read otherwise. A fit that fails leaves the previous
        one as it was."""
        before = dict(self.__dict__)
        try:
            return self._fit(Xs, Xt, ys)
        except BaseException:  # a failed refit leaves the previous fit whole, not half replaced
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    def _fit(self, Xs: Any, Xt: Any, ys: Any) -> OTMapping:
        self._check_params()
        xs, xt = fit_pair(Xs, Xt)
        labels = None
        if self.reg_cl is not None:  # the labels only group the source samples: any kind of label
            if ys is None:
                raise InputError("reg_cl (class regularisation) needs the source labels: fit(Xs, Xt, ys)")
            labels = as_groups(ys, xs.shape[0], "ys")
        start = time.perf_counter()
        ns, nt = xs.shape[0], xt.shape[0]
        backend = self.backend
        if backend == "auto":
            backend = "pot" if (self.reg is None or ns * nt <= POT_MAX_ENTRIES) else "auto"
        self.f_ = self.g_ = self.coupling_ = None
        self.reg_, self.reg_cl_ = self.reg, self.reg_cl
        self.marginal_error_: float | None = None
        self.backend_ = backend
        if backend == "auto":
            chosen = _log_backend(xs, xt)
            self.backend_ = "log-" + chosen
            # an automatic KeOps choice is passed on as "auto", so that KeOps failing to compile
            # falls back to "blocked"
            backend = "auto" if chosen == "keops" else chosen
        short = None  # an exact plan POT's network simplex did not finish: (its iteration cap, POT's word)
        if backend == "pot":
            short = self._fit_pot(xs, xt, labels)
        else:
            dtype = torch.float32 if self.dtype == "float32" else torch.float64
            # the cost and the mapping are the same for data moved as a whole: centred in float64
            # first, data far from the origin keeps its precision in float32
            centre = torch.cat([xs, xt]).mean(0)  # (D,)
            ms, mt = xs - centre, xt - centre
            spread = max(float(ms.abs().max()), float(mt.abs().max()))
            ms, mt = ms.to(dtype), mt.to(dtype)
            check_narrowed((ms, mt), spread)
            self._fit_log(ms, mt, labels, backend)
            self.mapped_ = self.mapped_ + centre.cpu().numpy()
        self.converged_ = short is None and (self.marginal_error_ is None or self.marginal_error_ <= self._tol_reached)
        if short is not None:
            warn_outside_dalib(f"OTMapping: exact OT stopped after {short[0]} network-simplex iterations short of the "
                               f"optimal plan ({short[1]}): raise max_iter", RuntimeWarning)
        elif not self.converged_:
            warn_outside_dalib(f"OTMapping: Sinkhorn stopped after max_iter={self.max_iter} iterations with a "
                               f"target-marginal error of {self.marginal_error_:.3g} > tol={self._tol_reached:.3g}: "
                               "raise max_iter or reg", RuntimeWarning)
        # float64 copies: a float64 array's tensor is a view of it, which the caller may change later
        self.xs_ = xs.clone()
        self.xt_ = xt.clone()
        self._keep_features(Xs, xs.shape[1])
        self.fit_time_ = time.perf_counter() - start
        return self

    def _uses_continuous_map(self) -> bool:
        return self.reg_ is not None and self.reg_cl_ is None

    def _fit_pot(self, xs: Tensor, xt: Tensor, labels: np.ndarray | None) -> tuple[int, str] | None:
        """The plan from POT; returns an exact plan's iteration cap and POT's word when its
        network simplex stopped short of the optimum, else None."""
        ot = import_quietly("ot")
        from dalib.kernels import sqdist

        xs, xt = xs.cpu(), xt.cpu()  # POT solves on the CPU in float64, whatever the inputs' device
        ns, nt = xs.shape[0], xt.shape[0]
        cost = sqdist(xs, xt)  # (Ns, Nt) float64
        scale = 1.0
        if self.norm == "median":
            scale = float(np.median(cost.numpy()))  # numpy's (interpolated) median, as POT
        elif self.norm == "max":
            scale = float(cost.max())
        scale = scale if scale > 0 else 1.0
        cost = cost / scale
        a = torch.full((ns,), 1.0 / ns, dtype=torch.float64)
        b = torch.full((nt,), 1.0 / nt, dtype=torch.float64)
        n_iter, short = 0, None
        if self.reg is None:
            # the network simplex's iteration cap: POT's 100000 stopped 2000 x 2000 problems short of
            # the optimum (21% of the samples mapped elsewhere); the cap costs nothing where it is not reached
            limit = max(EMD_MIN_ITER, EMD_ITER_PER_ENTRY * ns * nt, self.max_iter)
            with warnings.catch_warnings():  # ours, after the fit, says it (POT's warns per solve)
                warnings.filterwarnings("ignore", message=".*numItermax reached.*")
                found, log = ot.emd(a.numpy(), b.numpy(), cost.numpy(), numItermax=limit, log=True)
            plan = torch.as_tensor(found)
            if log.get("result_code") != 1:
                short = (limit, log.get("warning") or "not optimal")
        else:
            reg = float(self.reg)
            penalty = torch.zeros_like(cost)  # (Ns, Nt) η W
            rounds = 1 if self.reg_cl is None else int(self.max_outer_iter)
            onehot = None
            if self.reg_cl is not None:
                assert labels is not None
                _, inverse = np.unique(labels, return_inverse=True)
                onehot = torch.nn.functional.one_hot(torch.from_numpy(inverse)).to(torch.float64)  # (Ns, G)
            log = None
            for _ in range(rounds):
                # warm start from the previous majorisation step's scalings
                warm = None if log is None else (log["log_u"], log["log_v"])
                with warnings.catch_warnings():  # one warning of ours, after the fit, not POT's per solve
                    warnings.filterwarnings("ignore", message=".*did not converge.*")
                    plan, log = ot.sinkhorn(
                        a, b, cost + penalty, reg, method="sinkhorn_log",
                        numItermax=int(self.max_iter), stopThr=float(self.tol), log=True, warmstart=warm,
                    )
                n_iter += int(log.get("niter", self.max_iter - 1)) + 1  # POT logs the last loop index
                if onehot is not None:
                    class_mass = onehot.T @ plan  # (G, Nt) Σ_{i∈c} P_ij
                    w = _LPL1_P * (class_mass + _LPL1_DELTA) ** (_LPL1_P - 1.0)  # (G, Nt)
                    penalty = float(self.reg_cl) * (onehot @ w)  # (Ns, Nt)
            # P_ij = exp(u_i + v_j − (C_ij + ηW_ij)/reg): f = reg(u − log a), g = reg(v − log b)
            assert log is not None
            # POT's criterion (the L2 norm of the target marginal's error), read off the final
            # plan: the error POT logs is checked every 10 iterations only, so may be stale
            self.marginal_error_ = float(torch.linalg.vector_norm(torch.as_tensor(plan).sum(0) - b))
            self.f_ = (reg * (log["log_u"] - a.log())).numpy()
            self.g_ = (reg * (log["log_v"] - b.log())).numpy()
        plan = plan.to(torch.float64)
        rows = plan.sum(1, keepdim=True)  # (Ns, 1)
        mapped = (plan / rows) @ xt  # (Ns, D)
        mapped[~torch.isfinite(mapped).all(1)] = 0.0  # rows without mass, as POT
        self.coupling_ = plan.numpy()
        self.mapped_ = mapped.numpy()
        self.cost_scale_ = scale
        self.n_iter_ = n_iter
        return short

    def _fit_log(self, xs: Tensor, xt: Tensor, labels: np.ndarray | None, backend: str) -> None:
        ns, nt = xs.shape[0], xt.shape[0]
        scale = _cost_scale(xs, xt, self.norm)
        reg = float(self.reg)
        eps = 0.5 * reg * scale  # the softmin's ε, used as a factor 1/ε
        largest = torch.finfo(xs.dtype).max
        if not (eps > 0 and 1.0 / eps < largest):
            wider = "set dtype='float64'" if xs.dtype != torch.float64 else ""
            if self.norm is None or not 1.0 / reg < largest:  # reg itself is the culprit
                why = "1/ε = 2/reg overflows" if self.norm is None else "1/reg overflows"
                raise ConfigError(f"reg={self.reg!r} is too small for {self.dtype} arithmetic ({why}): "
                                  f"raise reg{', or ' + wider if wider else ''}")
            raise InputError(f"the data's squared distances ({self.norm} {scale:.3g}) make Sinkhorn's ε = reg·{scale:.3g}/2 "
                             f"too small for {self.dtype} arithmetic: {wider or 'scale the data up'}")
        tol = self._tol_reached
        a = torch.full((ns,), 1.0 / ns, dtype=xs.dtype, device=xs.device)
        b = torch.full((nt,), 1.0 / nt, dtype=xs.dtype, device=xs.device)
        if self.reg_cl is None:
            res = log_sinkhorn(xs, xt, a, b, reg, scale, max_iter=int(self.max_iter), tol=tol, backend=backend)
            mapped = barycentric_map(xs, xt, res.g / reg + b.log(), reg, scale)  # (Ns, D)
            n_iter = res.n_iter
        else:
            assert labels is not None
            classes = np.unique(labels)
            groups = [torch.from_numpy(np.flatnonzero(labels == c)).to(xs.device) for c in classes]
            penalty = torch.zeros(len(groups), nt, dtype=xs.dtype, device=xs.device)  # (G, Nt) η W
            res = None
            n_iter = 0
            rounds = int(self.max_outer_iter)
            for r in range(rounds):
                res = log_sinkhorn(xs, xt, a, b, reg, scale, groups=groups, w=penalty,
                                   f0=None if res is None else res.f, g0=None if res is None else res.g,
                                   max_iter=int(self.max_iter), tol=tol, backend=backend)
                n_iter += res.n_iter
                if r == rounds - 1:
                    break  # the plan is the last solve's, with the penalty it used
                s = group_softmin(xt, xs, res.f, a.log(), groups, reg, scale, backend)  # (G, Nt)
                class_mass = b * torch.exp((res.g - penalty - s) / reg)  # (G, Nt) Σ_{i∈c} P_ij
                penalty = float(self.reg_cl) * _LPL1_P * (class_mass + _LPL1_DELTA) ** (_LPL1_P - 1.0)
            assert res is not None
            mapped = torch.empty_like(xs)
            for c, idx in enumerate(groups):
                mapped[idx] = barycentric_map(xs[idx], xt, (res.g - penalty[c]) / reg + b.log(), reg, scale)
        self.f_ = res.f.to(torch.float64).cpu().numpy()
        self.g_ = res.g.to(torch.float64).cpu().numpy()
        self.mapped_ = mapped.to(torch.float64).cpu().numpy()
        self.cost_scale_ = scale
        self.n_iter_ = n_iter
        self.marginal_error_ = float(res.marginal_error)

    @property
    def _tol_reached(self) -> float:
        """``tol``, raised on the log-domain path to what its precision can reach."""
        if self.backend_ == "pot" or getattr(self, "reg_", self.reg) is None:
            return float(self.tol)
        floor = 16.0 * torch.finfo(torch.float32 if self.dtype == "float32" else torch.float64).eps
        return max(float(self.tol), floor)

    # ------------------------------------------------------------- transform
    @outside_autocast
    @cpu_by_default
    def transform(self, X: Any = None, *, Xs: Any = None) -> Any:
        """Transported samples (n, d): a tensor for a tensor, else a numpy array; ``Xs=`` as
        POT's ``ot.da`` names them. For the fitted ``Xs`` the barycentric mapping; for other
        samples see the module docstring."""
        x, X = self._transform_input(X, Xs, "mapped_")
        if x.shape == self.xs_.shape and torch.equal(x, self.xs_.to(x.device)):
            return like_input(torch.from_numpy(self.mapped_.copy()), X)  # a copy: editing it leaves the fit as it is
        if self._uses_continuous_map():
            xt = self.xt_.to(x.device)
            h = torch.from_numpy(self.g_).to(x.device) / float(self.reg_) - math.log(xt.shape[0])
            return like_input(barycentric_map(x, xt, h, float(self.reg_), self.cost_scale_), X)
        # nearest fitted source sample's displacement
        xs = self.xs_.to(x.device)
        nearest = nearest_rows(x, xs)  # (n,)
        shift = torch.from_numpy(self.mapped_).to(x.device)[nearest] - xs[nearest]  # (n, d)
        return like_input(x + shift, X)

    def fit_transform(self, Xs: Any, Xt: Any, ys: Any = None) -> Any:
        return self.fit(Xs, Xt, ys).transform(Xs)


def _log_backend(xs: Tensor, xt: Tensor) -> str:
    """The kernels' choice for ``auto``, except ``dense``: the log-domain path is for plans
    too large to form (on CUDA the kernels form them below KeOps' size)."""
    from dalib.kernels import resolve_backend

    backend = resolve_backend("auto", xs, xt)
    return "blocked" if backend == "dense" else backend


def _cost_scale(xs: Tensor, xt: Tensor, norm: str | None) -> float:
    """The divisor of the squared-Euclidean cost without forming it: the exact max over
    blocks of rows, or the median on a fixed random subset (:data:`MEDIAN_SUBSET`)."""
    from dalib.kernels import sqdist

    if norm is None:
        return 1.0
    if norm == "max":
        rows = max(1, (1 << 22) // xt.shape[0])
        value = max(float(sqdist(xs[i : i + rows], xt).max()) for i in range(0, xs.shape[0], rows))
    else:
        gen = torch.Generator().manual_seed(0)
        i = torch.randperm(xs.shape[0], generator=gen)[:MEDIAN_SUBSET].to(xs.device)
        j = torch.randperm(xt.shape[0], generator=gen)[:MEDIAN_SUBSET].to(xt.device)
        value = float(np.median(sqdist(xs[i].to(torch.float64), xt[j].to(torch.float64)).cpu().numpy()))
    return value if value > 0 else 1.0
