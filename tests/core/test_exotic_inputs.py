"""Inputs that numpy or torch hold in a form of their own (sparse, nested and meta tensors,
flipped, big-endian and read-only arrays, timedeltas, 0-d arrays, object labels): one line
that names the argument and says what to give, or the result of the plain array, in every
entry point (the shallow estimators, Domain.from_arrays, the losses and the kernels)."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dalib.data import Domain
from dalib.errors import DataError, InputError
from dalib.kernels import gaussian_matvec, gaussian_mean, softmin, sqdist
from dalib.losses import coral, mmd, ot_plan, sinkhorn
from dalib.shallow import CORAL, KMM, OTMapping
from dalib.shallow.pipeline import run_shallow

RNG = np.random.default_rng(0)
XS, XT = RNG.normal(size=(30, 4)), RNG.normal(size=(25, 4))
YS = np.arange(30) % 3


def exotic(t: torch.Tensor, kind: str) -> torch.Tensor:
    """``t`` as a sparse (COO or CSR), nested or meta tensor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # (torch: CSR and nested tensors are beta, prototype)
        if kind == "coo":
            return t.to_sparse()
        if kind == "csr":
            return t.to_sparse_csr() if t.dim() == 2 else t.to_sparse()
        if kind == "nested":
            return torch.nested.nested_tensor(list(t.unbind())) if t.dim() == 2 else t.to_sparse()
        return t.to("meta")


def refusal(name: str, kind: str, where: str = "") -> str:
    """The exact one-line message for ``name`` given as a tensor of ``kind``."""
    if kind == "meta":
        text = (f"{name} is on the meta device, which holds no values: dalib reads them, so give {name} on the "
                "CPU or a GPU")
    elif kind == "nested":
        text = f"{name} is a nested tensor: give a dense one (torch.stack({name}.unbind()))"
    else:
        text = f"{name} is a sparse tensor: give {name}.to_dense()"
    return "^" + re.escape(text + where) + "$"


KINDS = ["coo", "csr", "nested", "meta"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fit", [lambda x: CORAL().fit(x, XT), lambda x: KMM().fit(x, XT),
                                 lambda x: OTMapping().fit(x, XT)], ids=["CORAL", "KMM", "OTMapping"])
def test_the_shallow_estimators_refuse_sparse_nested_and_meta_features(kind, fit):
    with pytest.raises(InputError, match=refusal("Xs", kind)):
        fit(exotic(torch.tensor(XS), kind))


@pytest.mark.parametrize("kind", KINDS)
def test_the_shallow_labels_refuse_sparse_and_meta_tensors(kind):
    ys = exotic(torch.tensor(YS), kind)
    shown = "coo" if kind in ("csr", "nested") else kind  # (a 1-D tensor has neither form: COO stands in)
    with pytest.raises(InputError, match=refusal("ys", shown)):
        OTMapping(reg_cl=0.1).fit(XS, XT, ys)
    with pytest.raises(InputError, match=refusal("ys", shown)):
        run_shallow("coral", XS, ys, XT)


@pytest.mark.parametrize("kind", KINDS)
def test_domain_from_arrays_refuses_sparse_nested_and_meta_tensors(kind):
    x = exotic(torch.tensor(XS), kind)
    with pytest.raises(DataError, match=refusal("features", kind, " in domain d")):
        Domain.from_arrays("d", x, YS)
    with pytest.raises(DataError, match=refusal("features", kind, " in domain d")):
        Domain.from_arrays("d", x, None, num_classes=3)
    shown = "coo" if kind in ("csr", "nested") else kind
    hint = " in domain d (map class names to indices 0..C-1 and pass classes=)"
    with pytest.raises(DataError, match=refusal("labels", shown, hint)):
        Domain.from_arrays("d", XS, exotic(torch.tensor(YS), kind))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("loss", [mmd, coral, sinkhorn, ot_plan, sqdist, lambda x, y: gaussian_mean(x, y, 1.0)],
                         ids=["mmd", "coral", "sinkhorn", "ot_plan", "sqdist", "gaussian_mean"])
def test_the_losses_and_kernels_refuse_sparse_nested_and_meta_points(kind, loss):
    x, y = torch.tensor(XS), torch.tensor(XT)
    with pytest.raises(InputError, match=refusal("x", kind)):
        loss(exotic(x, kind), y)


@pytest.mark.parametrize("kind", ["coo", "meta"])
def test_weights_and_bandwidths_refuse_sparse_and_meta_tensors(kind):
    x, y = torch.tensor(XS), torch.tensor(XT)
    b = exotic(torch.full((25,), 1 / 25, dtype=torch.float64), kind)
    for solve in (sinkhorn, ot_plan):
        with pytest.raises(InputError, match=refusal("b", kind)):
            solve(x, y, b=b)
    with pytest.raises(InputError, match=refusal("bandwidths", kind)):
        mmd(x, y, bandwidths=exotic(torch.tensor([1.0, 2.0]), kind))
    with pytest.raises(InputError, match=refusal("v", kind)):
        gaussian_matvec(x, y, exotic(torch.ones(25, dtype=torch.float64), kind), 1.0)
    with pytest.raises(InputError, match=refusal("h", kind)):
        softmin(x, y, exotic(torch.zeros(25, dtype=torch.float64), kind), 0.5)
    with pytest.raises(InputError, match=refusal("cost", kind)):
        ot_plan(cost=exotic(torch.ones(30, 25, dtype=torch.float64), kind))


def test_numpy_weights_of_any_layout_give_the_plain_arrays_result():
    """Flipped (negative strides), big-endian and read-only weights are read as their values
    (torch had refused the first two and warned of the third); object arrays are refused as
    the points are."""
    x, y = torch.tensor(XS), torch.tensor(XT)
    w = RNG.uniform(0.5, 1.5, size=30)
    w /= w.sum()
    frozen = w.copy()
    frozen.flags.writeable = False
    for given, plain in ((np.flip(w), np.ascontiguousarray(np.flip(w))), (w.astype(">f8"), w), (frozen, w)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = sinkhorn(x, y, a=given)
        assert torch.equal(got, sinkhorn(x, y, a=plain))
    with pytest.raises(InputError, match=r"^a must hold numbers, got dtype object$"):
        sinkhorn(x, y, a=w.astype(object))
    with pytest.raises(InputError, match=r"^a must hold numbers, got dtype object$"):
        ot_plan(x, y, a=w.astype(object))


def test_numpy_weights_of_any_layout_give_the_plain_arrays_plan():
    pytest.importorskip("ot")
    x, y = torch.tensor(XS), torch.tensor(XT)
    w = RNG.uniform(0.5, 1.5, size=30)
    w /= w.sum()
    plain = ot_plan(x, y, a=np.ascontiguousarray(np.flip(w)))
    assert torch.equal(ot_plan(x, y, a=np.flip(w)), plain)
    assert torch.equal(ot_plan(x, y, a=np.flip(w).astype(">f8")), plain)


@pytest.mark.parametrize("x, message", [
    (sp.csr_matrix(XS), r"features is a sparse matrix: give a dense array \(features.toarray\(\)\) in domain d"),
    (np.array(3.0), r"features of shape \(\) in domain d: give \(N, D\) or \(N, C, H, W\) \(one feature per "
                    r"sample: reshape to \(N, 1\)\)"),
], ids=["scipy-sparse", "0-d"])
def test_an_unlabelled_domain_refuses_features_as_a_labelled_one(x, message):
    """An unlabelled domain counted its samples with len(x) before any check."""
    with pytest.raises(DataError, match=f"^{message}$"):
        Domain.from_arrays("d", x, None, num_classes=3)
    with pytest.raises(DataError, match=f"^{message}$"):
        Domain.from_arrays("d", x, YS)


def test_object_labels_holding_nan_are_refused():
    """np.unique makes each NaN a class of its own (NaN equals nothing): 2 classes and 10 NaN
    made 12 groups."""
    ys = np.array([np.nan, 1, 2] * 10, dtype=object)
    with pytest.raises(InputError, match=r"^ys has missing labels \(NaN\): each source sample needs its class here$"):
        OTMapping(reg_cl=0.1).fit(XS, XT, ys)
    named = OTMapping(reg_cl=0.1).fit(XS, XT, np.array(["a", "b", "c"] * 10, dtype=object)).mapped_
    np.testing.assert_array_equal(named, OTMapping(reg_cl=0.1).fit(XS, XT, YS).mapped_)


def test_timedeltas_are_refused_as_datetimes_are():
    td = np.zeros((30, 4), dtype="m8[ns]")
    with pytest.raises(InputError, match=r"^Xs must hold numbers, got dtype timedelta64\[ns\]$"):
        CORAL().fit(td, XT)
    with pytest.raises(DataError, match=r"^features must hold numbers, got dtype timedelta64\[ns\] in domain d$"):
        Domain.from_arrays("d", td, YS)


def test_a_0d_array_is_told_its_shape():
    with pytest.raises(InputError, match=r"^Xs must be a 2-D \(n_samples, n_features\) array, got shape \(\)$"):
        CORAL().fit(np.array(3.0), XT)
    with pytest.raises(InputError, match=r"^Xt must be a 2-D \(n_samples, n_features\) array, got shape \(\)$"):
        CORAL().fit(XS, np.array(3.0))
