"""CORAL: correlation alignment (Sun, Feng & Saenko, AAAI 2016).

Whiten the source features with their own covariance and re-colour them with the
target's, both regularised by ``λI``:

.. math::

    C_s = \\mathrm{cov}(X_s) + \\lambda I,\\quad C_t = \\mathrm{cov}(X_t) + \\lambda I,\\quad
    X_s' = X_s\\, C_s^{-1/2} C_t^{1/2}.

Following the paper's code, the features are not centred by the map (the paper z-scores
each domain first) and the covariances are the unbiased ones (MATLAB ``cov``). Then
``cov(X_s') = C_t^{1/2}(I − λC_s^{-1})C_t^{1/2}``: the target's covariance up to the
regularisation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dalib._arrays import cpu_by_default
from dalib.errors import InputError
from dalib.kernels._checks import outside_autocast
from dalib.shallow._checks import check_positive, fit_pair, like_input
from dalib.shallow._params import Params

__all__ = ["CORAL", "sym_matrix_power"]


def sym_matrix_power(c: Tensor, power: float) -> Tensor:
    """``c^power`` for a symmetric positive definite (d, d) matrix, by eigendecomposition."""
    evals, evecs = torch.linalg.eigh(c)  # (d,), (d, d)
    evals = evals.clamp_min(torch.finfo(c.dtype).tiny)
    return (evecs * evals.pow(power)) @ evecs.T  # (d, d)


def _covariance(x: Tensor) -> Tensor:
    xc = x - x.mean(0)  # (N, d)
    return xc.T @ xc / (x.shape[0] - 1)  # (d, d)


class CORAL(Params):
    """Closed-form correlation alignment of source features onto the target.

    ``CORAL(reg=1.0).fit(Xs, Xt).transform(Xs)`` → the re-coloured source features, same
    type (numpy array or tensor) as the input. ``reg`` is λ (the paper's default 1).
    Attributes after fit: ``matrix_`` (d, d) float64 ``C_s^{-1/2} C_t^{1/2}``,
    ``cov_source_``, ``cov_target_`` (regularised covariances).
    """

    def __init__(self, reg: float = 1.0) -> None:
        self.reg = reg

    def _check_params(self) -> None:
        check_positive(self.reg, "reg", allow_zero=True)

    @outside_autocast
    @cpu_by_default
    def fit(self, Xs: Any, Xt: Any, ys: Any = None) -> CORAL:
        """Estimate the map from source ``Xs`` (n_s, d) and target ``Xt`` (n_t, d)."""
        self._check_params()
        xs, xt = fit_pair(Xs, Xt)
        for name, x in (("Xs", xs), ("Xt", xt)):
            if x.shape[0] < 2:
                raise InputError(f"{name} needs at least 2 samples to estimate a covariance, got {x.shape[0]}")
        eye = torch.eye(xs.shape[1], dtype=xs.dtype, device=xs.device)
        cov_s = _covariance(xs) + float(self.reg) * eye  # (d, d)
        cov_t = _covariance(xt) + float(self.reg) * eye  # (d, d)
        if self.reg == 0:
            # numerically singular as numpy's matrix_rank counts: eigenvalues up to d·eps of the
            # largest are rounding noise, and their inverse square roots would blow it up
            ev = torch.linalg.eigvalsh(cov_s)  # ascending
            if bool(ev[0] <= ev[-1] * xs.shape[1] * torch.finfo(ev.dtype).eps):
                raise InputError("the source covariance is singular: use reg > 0")
        matrix = (sym_matrix_power(cov_s, -0.5) @ sym_matrix_power(cov_t, 0.5)).cpu().numpy()  # (d, d)
        # set together once all is computed: a fit that fails leaves the previous one whole
        self.cov_source_, self.cov_target_, self.matrix_ = cov_s, cov_t, matrix
        self._keep_features(Xs, xs.shape[1])
        return self

    @outside_autocast
    @cpu_by_default
    def transform(self, X: Any = None, *, Xs: Any = None) -> Any:
        """Re-coloured features ``X @ matrix_`` (n, d); ``Xs=`` as POT's ``ot.da`` names them."""
        x, given = self._transform_input(X, Xs, "matrix_")
        return like_input(x @ torch.from_numpy(self.matrix_).to(x.device), given)

    def fit_transform(self, Xs: Any, Xt: Any, ys: Any = None) -> Any:
        return self.fit(Xs, Xt, ys).transform(Xs)
