"""Feature-file datasets: Office-Caltech10 SURF and Amazon reviews, and their error branches."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dalib.data import load_domain
from dalib.data.office_caltech import CLASSES, preprocess_surf
from dalib.errors import DataError


def write_mat(path, **arrays):
    import scipy.io

    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), arrays)


# JDA paper (Long et al. ICCV 2013), Table 2, 1-NN column: all source samples, no adaptation.
JDA_1NN = {
    ("C", "A"): 23.70,
    ("C", "W"): 25.76,
    ("C", "D"): 25.48,
    ("A", "C"): 26.00,
    ("A", "W"): 29.83,
    ("A", "D"): 25.48,
    ("W", "C"): 19.86,
    ("W", "A"): 22.96,
    ("W", "D"): 59.24,
    ("D", "C"): 26.27,
    ("D", "A"): 28.50,
    ("D", "W"): 63.39,
}


def _nn_accuracy(src, tgt) -> float:
    d = torch.cdist(tgt.x.double(), src.x.double())  # (Nt, Ns)
    return 100 * float((src.y[d.argmin(1)] == tgt.y).double().mean())


@pytest.mark.parametrize(
    ("domain", "n", "counts"),
    [
        ("amazon", 958, [92, 82, 94, 99, 100, 100, 99, 100, 94, 98]),
        ("caltech", 1123, [151, 110, 100, 138, 85, 128, 133, 94, 87, 97]),
        ("dslr", 157, [12, 21, 12, 13, 10, 24, 22, 12, 8, 23]),
        ("webcam", 295, [29, 21, 31, 27, 27, 30, 43, 30, 27, 30]),
    ],
)
def test_office_caltech_shapes(real_root, domain, n, counts):
    dom = load_domain("office-caltech-surf", domain, data_root=real_root)
    assert dom.name == domain and len(dom) == n and dom.input_shape == (800,)
    assert dom.x.shape == (n, 800) and dom.x.dtype == torch.float32 and dom.y.dtype == torch.int64
    assert dom.num_classes == 10 and dom.classes == CLASSES
    assert torch.bincount(dom.y, minlength=10).tolist() == counts
    # z-scored within the domain (population std)
    torch.testing.assert_close(
        dom.x.double().mean(0), torch.zeros(800, dtype=torch.float64), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        dom.x.double().std(0, unbiased=False),
        torch.ones(800, dtype=torch.float64),
        atol=1e-4,
        rtol=0,
    )
    x, y = dom.dataset[0]
    assert x.shape == (800,) and int(y) == int(dom.y[0])


def test_office_caltech_1nn_reproduces_jda(real_root):
    doms = {k: load_domain("office-caltech-surf", k, data_root=real_root) for k in "ACDW"}
    accs = {task: _nn_accuracy(doms[task[0]], doms[task[1]]) for task in JDA_1NN}
    for task, expected in JDA_1NN.items():
        assert accs[task] == pytest.approx(expected, abs=0.01), task
    assert np.mean(list(accs.values())) == pytest.approx(31.37, abs=0.01)


def test_office_caltech_accepts_the_folder_itself(real_root):
    dom = load_domain("office-caltech-surf", "W", data_root=real_root / "office_caltech10_surf")
    assert len(dom) == 295


def test_default_data_root_is_used(real_root, monkeypatch):
    monkeypatch.setenv("DALIB_DATA_ROOT", str(real_root))
    assert len(load_domain("office-caltech-surf", "d")) == 157


def test_preprocess_surf_guards():
    counts = np.array([[0, 0, 0], [1, 3, 0], [2, 2, 0]])  # a zero row, a constant column
    x = preprocess_surf(counts)
    assert np.all(np.isfinite(x))
    assert np.all(x[:, 2] == 0)
    np.testing.assert_allclose(x.std(0)[:2], 1.0)
    # a column constant after the row division (0.1 in every row) whose mean rounds off it:
    # its std is ~1e-17, not 0, and dividing the noise by it gave -1 in every row
    x = preprocess_surf(np.array([[1, 9], [2, 18], [3, 27]]))
    assert np.all(x == 0)


@pytest.mark.parametrize(
    ("domain", "n"), [("books", 2000), ("dvd", 1999), ("electronics", 1998), ("kitchen", 1999)]
)
def test_amazon_reviews_shapes(real_root, domain, n):
    dom = load_domain("amazon-reviews", domain, data_root=real_root)
    assert dom.name == domain and len(dom) == n and dom.input_shape == (400,)
    assert dom.x.shape == (n, 400) and dom.x.dtype == torch.float32
    assert dom.num_classes == 2 and dom.classes == ["negative", "positive"]
    assert set(dom.y.tolist()) == {0, 1}
    assert abs(int(dom.y.sum()) - n / 2) <= 2  # balanced
    assert float(dom.x.min()) >= 0 and float(dom.x.max()) <= 1  # used as given


def test_amazon_features_used_as_given(real_root):
    import scipy.io

    raw = scipy.io.loadmat(str(real_root / "amazon_review_400" / "elec_400.mat"))
    dom = load_domain("amazon-reviews", "E", data_root=real_root)
    np.testing.assert_array_equal(dom.x.numpy(), raw["fts"].astype(np.float32))


# --- error branches, on synthetic files in tmp_path -------------------------------------

SURF = ("office-caltech-surf", "amazon", "office_caltech10_surf/amazon_SURF_L10.mat", 800)
REVIEWS = ("amazon-reviews", "electronics", "amazon_review_400/elec_400.mat", 400)


def _good(d: int, n: int = 20, one_based: bool = True):
    rng = np.random.default_rng(0)
    fts = rng.integers(0, 5, size=(n, d)).astype(np.float64) + 1
    labels = (np.arange(n) % 2 + (1 if one_based else 0)).reshape(-1, 1)
    return fts, labels


@pytest.mark.parametrize("spec", [SURF, REVIEWS], ids=["surf", "reviews"])
def test_synthetic_file_loads(tmp_path, spec):
    dataset, domain, rel, d = spec
    fts, labels = _good(d, one_based=dataset == SURF[0])
    write_mat(tmp_path / rel, fts=fts, labels=labels)
    dom = load_domain(dataset, domain, data_root=tmp_path)
    assert dom.x.shape == (20, d) and dom.y.tolist() == [0, 1] * 10


@pytest.mark.parametrize("spec", [SURF, REVIEWS], ids=["surf", "reviews"])
def test_sparse_features_and_labels_load_as_their_dense_values(tmp_path, spec):
    """MATLAB keeps bag-of-words features as sparse matrices: they read as their values (they
    were refused as not numeric)."""
    import scipy.sparse

    dataset, domain, rel, d = spec
    fts, labels = _good(d, one_based=dataset == SURF[0])
    fts[:, 1::2] = 0
    write_mat(tmp_path / rel, fts=scipy.sparse.csc_matrix(fts), labels=scipy.sparse.csc_matrix(labels.astype(float)))
    dom = load_domain(dataset, domain, data_root=tmp_path)
    write_mat(tmp_path / "dense" / rel, fts=fts, labels=labels)
    dense = load_domain(dataset, domain, data_root=tmp_path / "dense")
    assert torch.equal(dom.x, dense.x) and torch.equal(dom.y, dense.y) and dom.y.tolist() == [0, 1] * 10


@pytest.mark.parametrize("spec", [SURF, REVIEWS], ids=["surf", "reviews"])
def test_missing_file(tmp_path, spec):
    dataset, domain, rel, _ = spec
    with pytest.raises(DataError) as exc:
        load_domain(dataset, domain, data_root=tmp_path)
    msg = str(exc.value)
    where = f"(dataset {dataset}, domain {domain}; set --data-root)"
    assert msg == f"data file not found: {tmp_path / rel} {where}"


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage" * 10, b"x" * 2000, b"MATLAB 5.0 MAT-file" + b"\0" * 200],
    ids=["empty", "short-garbage", "long-garbage", "truncated-header"],
)
@pytest.mark.parametrize("spec", [SURF, REVIEWS], ids=["surf", "reviews"])
def test_corrupt_file(tmp_path, spec, content):
    dataset, domain, rel, _ = spec
    path = tmp_path / rel
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(DataError) as exc:
        load_domain(dataset, domain, data_root=tmp_path)
    msg = str(exc.value)
    assert msg.startswith(
        f"corrupt or unreadable .mat file: {path} (dataset {dataset}, domain {domain})"
    )
    assert "\n" not in msg


def test_truncated_real_file(tmp_path, real_root):
    data = (real_root / "office_caltech10_surf" / "dslr_SURF_L10.mat").read_bytes()
    path = tmp_path / "office_caltech10_surf" / "dslr_SURF_L10.mat"
    path.parent.mkdir()
    for cut in (len(data) // 2, 200):
        path.write_bytes(data[:cut])
        with pytest.raises(DataError, match="corrupt or unreadable .mat file: .*dslr_SURF_L10.mat"):
            load_domain("office-caltech-surf", "D", data_root=tmp_path)


@pytest.mark.parametrize("spec", [SURF, REVIEWS], ids=["surf", "reviews"])
def test_missing_key(tmp_path, spec):
    dataset, domain, rel, d = spec
    fts, labels = _good(d)
    write_mat(tmp_path / rel, X=fts, labels=labels)
    with pytest.raises(DataError, match=r"lacks key\(s\) fts; it holds: X, labels"):
        load_domain(dataset, domain, data_root=tmp_path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("spec", [SURF, REVIEWS], ids=["surf", "reviews"])
def test_nan_features(tmp_path, spec, bad):
    dataset, domain, rel, d = spec
    fts, labels = _good(d)
    fts[3, 7] = bad
    write_mat(tmp_path / rel, fts=fts, labels=labels)
    with pytest.raises(DataError) as exc:
        load_domain(dataset, domain, data_root=tmp_path)
    msg = str(exc.value)
    assert "NaN or infinite features" in msg and str(tmp_path / rel) in msg and domain in msg


@pytest.mark.parametrize("spec", [SURF, REVIEWS], ids=["surf", "reviews"])
def test_empty_domain(tmp_path, spec):
    dataset, domain, rel, d = spec
    write_mat(tmp_path / rel, fts=np.zeros((0, d)), labels=np.zeros((0, 1)))
    with pytest.raises(DataError, match=f"empty domain: no samples in .*{domain}"):
        load_domain(dataset, domain, data_root=tmp_path)


@pytest.mark.parametrize("spec", [SURF, REVIEWS], ids=["surf", "reviews"])
def test_wrong_feature_count(tmp_path, spec):
    dataset, domain, rel, d = spec
    fts, labels = _good(d + 1)
    write_mat(tmp_path / rel, fts=fts, labels=labels)
    with pytest.raises(DataError, match=f"has {d + 1} features, expected {d}"):
        load_domain(dataset, domain, data_root=tmp_path)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.zeros((19, 1)), r"has shape \(19, 1\), expected \(20, 1\)"),
        (np.array(["a"] * 20), "not a numeric array"),
        (np.full((20, 1), 0.5), "not integers"),
        (np.zeros((20, 1)), r"labels span 0..0, expected 1..10 \(the file's class numbers\)"),  # office: 1..10
        (np.full((20, 1), 11), r"labels span 11..11, expected 1..10"),
    ],
)
def test_bad_labels(tmp_path, labels, match):
    dataset, domain, rel, d = SURF
    fts, _ = _good(d)
    write_mat(tmp_path / rel, fts=fts, labels=labels)
    with pytest.raises(DataError, match=match):
        load_domain(dataset, domain, data_root=tmp_path)


def test_features_not_a_matrix(tmp_path):
    dataset, domain, rel, _ = REVIEWS
    write_mat(tmp_path / rel, fts=np.zeros((2, 3, 4)), labels=np.zeros((2, 1)))
    with pytest.raises(DataError, match=r"'fts' of .* has shape \(2, 3, 4\)"):
        load_domain(dataset, domain, data_root=tmp_path)


@pytest.mark.parametrize("spec", [SURF, REVIEWS], ids=["surf", "reviews"])
def test_a_data_file_that_is_a_folder_or_a_broken_link_or_stray_says_so(tmp_path, spec):
    """A folder or a broken link in the file's place was "not found"; a file of the name at the
    top of a root that holds the dataset's folder (a stray copy: another domain's data) had
    stood in silently for the one missing from the folder."""
    dataset, domain, rel, _ = spec
    where = f"(dataset {dataset}, domain {domain}; set --data-root)"
    (tmp_path / rel).mkdir(parents=True)
    with pytest.raises(DataError) as exc:
        load_domain(dataset, domain, data_root=tmp_path)
    assert str(exc.value) == f"data file {tmp_path / rel} is a folder, not a file {where}"
    (tmp_path / rel).rmdir()
    (tmp_path / rel).symlink_to(tmp_path / "gone.mat")
    with pytest.raises(DataError) as exc:
        load_domain(dataset, domain, data_root=tmp_path)
    assert str(exc.value) == f"data file {tmp_path / rel} is a broken link (to {tmp_path / 'gone.mat'}) {where}"
    (tmp_path / rel).unlink()
    fts, labels = _good(spec[3], one_based=dataset == SURF[0])
    write_mat(tmp_path / Path(rel).name, fts=fts, labels=labels)  # beside the dataset's folder, not in it
    with pytest.raises(DataError) as exc:
        load_domain(dataset, domain, data_root=tmp_path)
    assert str(exc.value) == f"data file not found: {tmp_path / rel} {where}"
    # a root that is the dataset's folder itself (it holds no such folder) is read as before
    write_mat(tmp_path / "flat" / Path(rel).name, fts=fts, labels=labels)
    assert len(load_domain(dataset, domain, data_root=tmp_path / "flat")) == len(labels)


def test_surf_features_that_are_not_counts_are_refused(tmp_path):
    """A copy saved after its own preprocessing (z-scored: negative, fractional) had been
    normalised and z-scored again, and trained without a word."""
    dataset, domain, rel, d = SURF
    fts, labels = _good(d)
    for name, bad in (("zscored", (fts - fts.mean(0)) / fts.std(0)), ("fractions", fts / fts.sum(1, keepdims=True))):
        write_mat(tmp_path / name / rel, fts=bad, labels=labels)
        with pytest.raises(DataError, match=r"features of .*amazon_SURF_L10.mat are not counts \(non-negative integers"):
            load_domain(dataset, domain, data_root=tmp_path / name)


def test_review_labels_of_minus_one_and_a_matlab_v73_file_say_what_is_expected(tmp_path):
    """-1/+1 sentiment labels (a common convention) had been told to "give y=None for an
    unlabelled domain", the Python API's words; a valid v7.3 file was "corrupt", with scipy's
    advice to use h5py, which the user cannot tell dalib to do."""
    dataset, domain, rel, d = REVIEWS
    fts, labels = _good(d, one_based=False)
    write_mat(tmp_path / rel, fts=fts, labels=2 * labels - 1)
    with pytest.raises(DataError, match=r"labels of .*_400.mat are -1, 1: expected 0 \(negative\) and 1 \(positive\)"):
        load_domain(dataset, domain, data_root=tmp_path)
    # a v7.3 file is HDF5 behind MATLAB's 128-byte header, which says so
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    (tmp_path / rel).write_bytes(header.ljust(116) + b" " * 8 + b"\x00\x02IM" + bytes(384))
    with pytest.raises(DataError, match=r"_400.mat .* is a MATLAB v7.3 \(HDF5\) file, which dalib does not read: "
                                        r"save it with MATLAB's -v7 option"):
        load_domain(dataset, domain, data_root=tmp_path)


@pytest.mark.parametrize("spec", [SURF, REVIEWS], ids=["surf", "reviews"])
def test_a_data_file_this_user_may_not_read_says_so(tmp_path, spec, monkeypatch):
    """A file of mode 000 read as "corrupt or unreadable" (it is whole: its permissions are the
    fix), and a dataset folder this user may not enter gave pathlib's bare "Permission denied:
    PATH", naming no dataset or domain. Played by the errors chmod makes (as root, chmod would
    not stop us)."""
    import pathlib

    import scipy.io

    dataset, domain, rel, d = spec
    fts, labels = _good(d, one_based=dataset == SURF[0])
    write_mat(tmp_path / rel, fts=fts, labels=labels)
    path, folder = tmp_path / rel, tmp_path / Path(rel).parent

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    with monkeypatch.context() as m:
        m.setattr(scipy.io, "loadmat", refuse)
        with pytest.raises(DataError) as exc:
            load_domain(dataset, domain, data_root=tmp_path)
    assert str(exc.value) == f"cannot read .mat file {path} (dataset {dataset}, domain {domain}): permission denied"

    real_stat = pathlib.Path.stat
    for denied in (folder, tmp_path):  # the dataset's folder, or the data root itself, of mode 000

        def stat(self, *args, denied=denied, **kwargs):  # what stat gives under a folder of mode 000
            if str(self).startswith(f"{denied}{os.sep}"):
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real_stat(self, *args, **kwargs)

        with monkeypatch.context() as m:
            m.setattr(pathlib.Path, "stat", stat)
            with pytest.raises(DataError) as exc:
                load_domain(dataset, domain, data_root=tmp_path)
        assert str(exc.value) == (f"cannot reach data file {path}: permission denied on a folder of its path "
                                  f"(dataset {dataset}, domain {domain}; set --data-root)")
