"""The embedded MNIST/USPS 16x16 digits."""

from __future__ import annotations

import gzip
import os
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from dalib.data import digits, load_domain
from dalib.data.convert_digits import main as convert_main
from dalib.data.convert_digits import quantize
from dalib.errors import DataError

REAL_DATA_ROOT = Path(
    os.environ.get("DALIB_DATA_ROOT") or Path(__file__).resolve().parents[3] / "shared" / "data"
)
PACKAGE_FILE = Path(digits.__file__).with_name("digits16.npz")
MAT = REAL_DATA_ROOT / "mnist_usps" / "MNIST_vs_USPS.mat"
needs_mat = pytest.mark.skipif(not MAT.is_file(), reason=f"{MAT} not found")


def test_embedded_file_is_small():
    assert PACKAGE_FILE.is_file()
    assert PACKAGE_FILE.stat().st_size < 2_000_000
    assert (PACKAGE_FILE.parent / "ATTRIBUTION.md").is_file()


@pytest.mark.parametrize(("domain", "n"), [("mnist", 2000), ("usps", 1800)])
def test_shapes_labels_ranges(domain, n):
    dom = load_domain("digits", domain)
    assert dom.name == domain and len(dom) == n
    assert dom.input_shape == (1, 16, 16) and dom.num_classes == 10
    assert dom.classes == [str(i) for i in range(10)]
    assert dom.x.shape == (n, 1, 16, 16) and dom.x.dtype == torch.float32
    assert dom.y.shape == (n,) and dom.y.dtype == torch.int64
    assert float(dom.x.min()) == 0.0 and 0.99 < float(dom.x.max()) <= 1.0
    assert set(dom.y.tolist()) == set(range(10))
    assert torch.bincount(dom.y).min() > n // 20  # every digit well represented
    x, y = dom.dataset[3]
    assert x.shape == (1, 16, 16) and int(y) == int(dom.y[3])
    batch = next(iter(torch.utils.data.DataLoader(dom.dataset, batch_size=8)))
    assert batch[0].shape == (8, 1, 16, 16) and batch[1].dtype == torch.int64


@pytest.mark.parametrize("domain", ["mnist", "usps"])
def test_orientation_upright(domain):
    dom = load_domain("digits", domain)
    one = dom.x[dom.y == 1].mean(0)[0]  # (16, 16) mean image of the digit 1
    # a vertical stroke: ink varies across columns, hardly along rows
    assert one.mean(0).var() > 3 * one.mean(1).var()
    seven = dom.x[dom.y == 7].mean(0)[0]
    # a 7's bar is at the top (not at the bottom, as it would be upside down)
    assert int(seven.sum(1).argmax()) < 8


def _mnist_t10k_class_means() -> torch.Tensor:
    root = REAL_DATA_ROOT / "mnist"
    with gzip.open(root / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    x = torch.from_numpy(images.astype(np.float32) / 255)[:, None]
    x = torch.nn.functional.interpolate(x, size=(16, 16), mode="area")[:, 0]  # (N, 16, 16)
    return torch.stack([x[torch.from_numpy(labels == k)].mean(0) for k in range(10)])


@pytest.mark.skipif(not (REAL_DATA_ROOT / "mnist").is_dir(), reason="official MNIST not found")
def test_orientation_matches_official_mnist():
    """Class means of embedded MNIST correlate best with the official (upright) MNIST as they
    are, not transposed or flipped."""
    ref = _mnist_t10k_class_means()
    dom = load_domain("digits", "mnist")
    ours = torch.stack([dom.x[dom.y == k, 0].mean(0) for k in range(10)])

    def corr(a, b):
        a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
        return float(a @ b / (a.norm() * b.norm()))

    variants = {
        "as is": ours,
        "transposed": ours.transpose(1, 2),
        "up-down": ours.flip(1),
        "left-right": ours.flip(2),
    }
    scores = {k: np.mean([corr(v[c], ref[c]) for c in range(10)]) for k, v in variants.items()}
    assert max(scores, key=scores.get) == "as is"
    assert scores["as is"] > 0.95


@needs_mat
def test_matches_source_mat():
    m = scipy.io.loadmat(str(MAT))
    for dom, xk, yk in [("mnist", "X_src", "Y_src"), ("usps", "X_tar", "Y_tar")]:
        d = load_domain("digits", dom)
        src = m[xk].T.reshape(-1, 16, 16)  # one sample per column, C order
        np.testing.assert_allclose(d.x[:, 0].numpy(), src, atol=1 / 510 + 1e-6)
        np.testing.assert_array_equal(d.y.numpy(), m[yk].ravel().astype(np.int64) - 1)
    # MNIST values are k/256 in the source: stored losslessly
    np.testing.assert_array_equal(
        load_domain("digits", "mnist").x[:, 0].numpy(), m["X_src"].T.reshape(-1, 16, 16)
    )


def _nn_accuracy(src, tgt) -> float:
    xs = src.x.flatten(1).double()
    xt = tgt.x.flatten(1).double()
    xs, xt = (
        xs / xs.norm(dim=1, keepdim=True),
        xt / xt.norm(dim=1, keepdim=True),
    )  # JDA's unit-norm samples
    pred = src.y[torch.cdist(xt, xs).argmin(1)]
    return 100 * float((pred == tgt.y).double().mean())


def test_nn_reproduces_jda_table():
    """1-NN M->U 65.94 and U->M 44.70 (JDA paper, Table 2)."""
    m, u = load_domain("digits", "M"), load_domain("digits", "U")
    assert _nn_accuracy(m, u) == pytest.approx(65.94, abs=0.01)
    assert _nn_accuracy(u, m) == pytest.approx(44.70, abs=0.01)


@needs_mat
def test_convert_script_reproduces_embedded_file(tmp_path, capsys):
    out = tmp_path / "d.npz"
    assert convert_main([str(MAT), str(out)]) == 0
    assert "mnist" in capsys.readouterr().out
    with np.load(out) as new, np.load(PACKAGE_FILE) as old:
        assert sorted(new.files) == sorted(old.files)
        for k in old.files:
            np.testing.assert_array_equal(new[k], old[k])


def test_convert_script_keeps_the_file_it_would_replace_when_the_disk_is_full(tmp_path, capsys, monkeypatch):
    """docs/data.md has it rebuild the package's own digits16.npz: written in place, a full disk
    (or a kill) left it cut short, and every digits run failed on it after."""
    import errno

    scipy.io.savemat(tmp_path / "small.mat", {"X_src": np.full((256, 2), 0.5), "Y_src": np.array([[1], [2]]),
                                              "X_tar": np.zeros((256, 1)), "Y_tar": np.array([[3]])})
    out = tmp_path / "digits16.npz"
    out.write_bytes(PACKAGE_FILE.read_bytes())

    def full(fh, **arrays):
        fh.write(b"PK\x03\x04 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", full)
    assert convert_main([str(tmp_path / "small.mat"), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {out} (No space left on device") and err.count("\n") == 1, err
    assert err.rstrip().endswith("; the file as it was is kept")
    assert out.read_bytes() == PACKAGE_FILE.read_bytes() and sorted(p.name for p in tmp_path.iterdir()) == [
        "digits16.npz", "small.mat"]


def test_convert_script_usage():
    assert convert_main([]) == 2


def test_convert_script_bad_source_is_one_line(tmp_path, capsys):
    out = tmp_path / "d.npz"
    scipy.io.savemat(tmp_path / "part.mat", {"X_src": np.zeros((256, 3))})
    (tmp_path / "junk.mat").write_bytes(b"junk" * 40)
    for src, message in [(tmp_path / "none.mat", "source file not found: "),
                         (tmp_path / "part.mat", "lacks key(s) Y_src, X_tar, Y_tar"),
                         (tmp_path / "junk.mat", "corrupt or unreadable .mat file: ")]:
        assert convert_main([str(src), str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_quantize():
    grid256 = np.arange(256) / 256
    q, s = quantize(grid256)
    assert s == 256 and np.array_equal(q / s, grid256)
    grid255 = np.arange(256) / 255
    q, s = quantize(grid255)
    assert s == 255 and np.array_equal(q / s, grid255)
    x = np.random.default_rng(0).random(1000)
    q, s = quantize(x)
    assert s == 255 and np.abs(q / s - x).max() <= 1 / 510 + 1e-12


def _fake_package(monkeypatch, folder: Path):
    monkeypatch.setattr(digits, "resources", types.SimpleNamespace(files=lambda pkg: folder))


def test_embedded_file_missing(monkeypatch, tmp_path):
    _fake_package(monkeypatch, tmp_path)
    with pytest.raises(
        DataError, match="embedded data file not found: .*digits16.npz .*domain mnist"
    ):
        load_domain("digits", "M")


def test_embedded_file_corrupt(monkeypatch, tmp_path):
    (tmp_path / "digits16.npz").write_bytes(b"PK\x03\x04 this is no zip file")
    _fake_package(monkeypatch, tmp_path)
    with pytest.raises(DataError, match="corrupt embedded data file: .*digits16.npz"):
        load_domain("digits", "usps")
    np.savez(tmp_path / "digits16.npz", other=np.zeros(3))
    with pytest.raises(DataError, match="corrupt embedded data file"):
        load_domain("digits", "usps")
    damaged = bytearray(PACKAGE_FILE.read_bytes())  # a member's compressed bytes damaged: zlib's error, a traceback
    damaged[1000:1100] = bytes(b ^ 0xFF for b in damaged[1000:1100])
    (tmp_path / "digits16.npz").write_bytes(bytes(damaged))
    with pytest.raises(DataError, match="corrupt embedded data file: .*digits16.npz .*: Error -3 while decompressing"):
        load_domain("digits", "mnist")


def test_a_data_root_given_to_the_embedded_digits_is_said_to_be_unused(tmp_path):
    # `--src M --tgt U --data-root X` trains on the embedded digits: X had been dropped unsaid
    with pytest.warns(UserWarning, match=r"dataset digits is embedded in dalib and reads no data root: .* is not used "
                                         r"\(--dataset digits-full reads the larger sets there\)"):
        load_domain("digits", "mnist", data_root=tmp_path)
