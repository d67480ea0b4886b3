"""digits-full: MNIST (15000) and USPS (9298) at 16x16, read from the data root."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dalib.cli import cli
from dalib.data import DatasetInfo, digits_full, get_dataset, infer_dataset, load_domain
from dalib.errors import DataError, RegistryError, UnknownNameError

MNIST_FILES = ("mnist_5k.csv.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# Per-digit counts: 500 each in mnist_5k.csv.gz plus the official MNIST test set; USPS
# train + test.
COUNTS = {
    "mnist": [1480, 1635, 1532, 1510, 1482, 1392, 1458, 1528, 1474, 1509],
    "usps": [1553, 1269, 929, 824, 852, 716, 834, 792, 708, 821],
}


@pytest.fixture
def root(real_root) -> Path:
    for folder in ("mnist", "usps"):
        if not (real_root / folder).is_dir():
            pytest.skip(f"{real_root / folder} not found")
    return real_root


@pytest.mark.parametrize(("domain", "n"), [("mnist", 15000), ("usps", 9298)])
def test_shapes_labels_ranges(root, domain, n):
    dom = load_domain("digits-full", domain, data_root=root)
    assert dom.name == domain and len(dom) == n and dom.dataset_name == "digits-full"
    assert dom.input_shape == (1, 16, 16) == load_domain("digits", domain).input_shape
    assert dom.num_classes == 10 and dom.classes == [str(d) for d in range(10)]
    assert dom.x.shape == (n, 1, 16, 16) and dom.x.dtype == torch.float32
    assert dom.y.shape == (n,) and dom.y.dtype == torch.int64
    assert float(dom.x.min()) == 0.0 and 0.99 < float(dom.x.max()) <= 1.0
    assert torch.bincount(dom.y, minlength=10).tolist() == COUNTS[domain]
    x, y = dom.dataset[7]
    assert x.shape == (1, 16, 16) and int(y) == int(dom.y[7])


def test_mnist_order_and_resize(root):
    """The 5000 CSV images (500 per digit) come first, then the IDX test set in file order,
    each resized 28x28 -> 16x16 (bilinear, antialiased)."""
    dom = load_domain("digits-full", "M", data_root=root)
    assert torch.bincount(dom.y[:5000]).tolist() == [500] * 10
    with gzip.open(root / "mnist" / MNIST_FILES[2]) as fh:
        labels = np.frombuffer(fh.read(), np.uint8, offset=8)
    np.testing.assert_array_equal(dom.y[5000:].numpy(), labels)
    with gzip.open(root / "mnist" / MNIST_FILES[1]) as fh:
        first = np.frombuffer(fh.read(16 + 784), np.uint8, offset=16).reshape(1, 1, 28, 28)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(first.astype(np.float32) / 255),
        size=(16, 16),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    np.testing.assert_allclose(dom.x[5000].numpy(), expected[0].numpy(), atol=1e-6, rtol=0)


def test_usps_values_as_stored(root):
    h5py = pytest.importorskip("h5py")
    dom = load_domain("digits-full", "U", data_root=root)
    with h5py.File(root / "usps" / "usps.h5", "r") as fh:
        train, test = fh["train/data"][()], fh["test/data"][()]
        target = np.concatenate([fh["train/target"][()], fh["test/target"][()]])
    x = dom.x.reshape(len(dom), 256).numpy()
    np.testing.assert_array_equal(x, np.concatenate([train, test]))
    np.testing.assert_array_equal(dom.y.numpy(), target)


def _class_means(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([x[y == k, 0].mean(0) for k in range(10)])  # (10, 16, 16)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("domain", ["mnist", "usps"])
def test_orientation_matches_embedded_digits(root, domain):
    """Each class mean correlates strongly with the embedded digits' (upright) one as it is,
    and less when transposed or flipped: the 16x16 images are upright, same orientation."""
    embedded = load_domain("digits", domain)
    ref = _class_means(embedded.x, embedded.y)
    dom = load_domain("digits-full", domain, data_root=root)
    ours = _class_means(dom.x, dom.y)
    variants = {
        "as is": ours,
        "transposed": ours.transpose(1, 2),
        "up-down": ours.flip(1),
        "left-right": ours.flip(2),
    }
    scores = {k: [_corr(v[c], ref[c]) for c in range(10)] for k, v in variants.items()}
    assert min(scores["as is"]) > 0.95
    for name in ("transposed", "up-down", "left-right"):
        assert np.mean(scores[name]) < np.mean(scores["as is"]) - 0.15, name


def test_inference_keeps_choosing_digits():
    info = get_dataset("digits-full")
    assert (info.domains, info.aliases, info.kind, info.needs) == (
        ("mnist", "usps"),
        {"M": "mnist", "U": "usps"},
        "image",
        "data_root",
    )
    assert info.inferable is False and get_dataset("digits").inferable is True
    for src, tgt in [("mnist", "usps"), ("M", "U"), ("u", "m")]:
        assert infer_dataset(src, tgt) == "digits"
    with pytest.raises(UnknownNameError, match="unknown domain 'svhn' of dataset digits-full"):
        load_domain("digits-full", "svhn")


def test_inferable_must_be_a_bool():
    with pytest.raises(RegistryError, match="inferable must be True or False"):
        DatasetInfo(name="t", description="", domains=("a",), inferable="no")


def test_data_root_may_be_the_folder_itself(root):
    assert len(load_domain("digits-full", "Mnist", data_root=root / "mnist")) == 15000
    assert len(load_domain("digits-full", "usps", data_root=root / "usps")) == 9298


def test_a_file_missing_from_the_folder_itself_is_named_there(tmp_path):
    folder = _write_mnist(tmp_path)
    (folder / MNIST_FILES[1]).unlink()
    with pytest.raises(DataError) as exc:
        load_domain("digits-full", "M", data_root=folder)
    assert str(exc.value).startswith(f"data file not found: {folder / MNIST_FILES[1]} (")


def test_parsed_once_and_domains_do_not_share_data(root, monkeypatch):
    calls = []
    read = digits_full.read_mnist_csv
    monkeypatch.setattr(
        digits_full, "read_mnist_csv", lambda *a, **k: calls.append(1) or read(*a, **k)
    )
    digits_full._read_cached.cache_clear()
    first = load_domain("digits-full", "M", data_root=root)
    first.x.zero_()
    first.y.fill_(3)
    second = load_domain("digits-full", "mnist", data_root=root / "mnist")  # same files
    assert len(calls) == 1
    assert float(second.x.max()) > 0.99 and torch.bincount(second.y).tolist() == COUNTS["mnist"]


# --- error branches, on small synthetic files in tmp_path ------------------------------------


def _idx(array: np.ndarray, type_byte: int = 0x08) -> bytes:
    head = bytes([0, 0, type_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(head + array.astype(">u1").tobytes())


def _write_mnist(root: Path, n_csv: int = 20, n_idx: int = 10) -> Path:
    folder = root / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = np.c_[rng.integers(0, 256, (n_csv, 784)), np.arange(n_csv) % 10]
    text = "\n".join(",".join(map(str, r)) for r in rows) + "\n"
    (folder / MNIST_FILES[0]).write_bytes(gzip.compress(text.encode()))
    (folder / MNIST_FILES[1]).write_bytes(_idx(rng.integers(0, 256, (n_idx, 28, 28))))
    (folder / MNIST_FILES[2]).write_bytes(_idx(np.arange(n_idx) % 10))
    return folder


def _write_usps(root: Path, **override) -> Path:
    h5py = pytest.importorskip("h5py")
    path = root / "usps" / "usps.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train/data": np.full((12, 256), 0.5, np.float32),
        "train/target": np.arange(12) % 10,
        "test/data": np.zeros((5, 256), np.float32),
        "test/target": np.arange(5),
    }
    arrays.update(override)
    with h5py.File(path, "w") as fh:
        for key, value in arrays.items():
            if value is not None:
                fh[key] = value
    return path


def test_synthetic_files_load(tmp_path):
    _write_mnist(tmp_path)
    _write_usps(tmp_path)
    m = load_domain("digits-full", "M", data_root=tmp_path)
    assert m.x.shape == (30, 1, 16, 16) and m.y.tolist() == list(range(10)) * 3
    u = load_domain("digits-full", "U", data_root=tmp_path)
    assert u.x.shape == (17, 1, 16, 16) and float(u.x[:12].min()) == 0.5


def test_cli_runs_with_dataset_flag(tmp_path):
    """``--dataset digits-full --src mnist --tgt usps`` (small files: the real ones are
    checked above; a run over 24000 images would make this test slow)."""
    _write_mnist(tmp_path / "data")
    _write_usps(tmp_path / "data")
    out = tmp_path / "run"
    args = ["run", "source_only", "--dataset", "digits-full", "--src", "mnist", "--tgt", "usps"]
    args += ["--data-root", str(tmp_path / "data"), "--steps", "2", "--batch-size", "8"]
    res = CliRunner().invoke(cli, [*args, "--quiet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "result.json").read_text())
    assert (result["dataset"], result["src"], result["tgt"]) == ("digits-full", "mnist", "usps")


def test_missing_data_root_and_files(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="data root not found: .*nowhere .*digits-full"):
        load_domain("digits-full", "M", data_root=tmp_path / "nowhere")
    (tmp_path / "afile").write_text("")
    with pytest.raises(DataError, match="data root is a file, not a folder: .*afile"):
        load_domain("digits-full", "M", data_root=tmp_path / "afile")
    monkeypatch.setenv("DALIB_DATA_ROOT", str(tmp_path / "elsewhere"))  # the error says where the path came from
    with pytest.raises(DataError, match=r"data root not found: .*elsewhere \(from \$DALIB_DATA_ROOT; dataset digits-full"):
        load_domain("digits-full", "M")
    for domain, rel in [("mnist", "mnist/mnist_5k.csv.gz"), ("usps", "usps/usps.h5")]:
        with pytest.raises(DataError) as exc:
            load_domain("digits-full", domain, data_root=tmp_path)
        where = f"(dataset digits-full, domain {domain}; set --data-root)"
        assert str(exc.value) == f"data file not found: {tmp_path / rel} {where}"
    folder = _write_mnist(tmp_path)
    (folder / MNIST_FILES[2]).unlink()
    with pytest.raises(DataError, match="data file not found: .*t10k-labels-idx1-ubyte.gz"):
        load_domain("digits-full", "M", data_root=tmp_path)


def test_no_data_root_anywhere(tmp_path, monkeypatch):
    monkeypatch.delenv("DALIB_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="no data root for dataset digits-full, domain usps"):
        load_domain("digits-full", "U")


@pytest.mark.parametrize(
    ("file", "content", "match"),
    [
        (0, b"not gzip at all", "corrupt or unreadable CSV file: .*mnist_5k.csv.gz"),
        (0, gzip.compress(b"1,2,3\n" * 4)[:-12], "corrupt or unreadable CSV file"),  # cut short
        (0, gzip.compress(b"label,pixel\n1,2\n"), "corrupt or unreadable CSV file: .*'label'"),
        (0, gzip.compress(b"1,2,3\n4,5,6\n"), "has 3 columns, expected 785"),
        (0, gzip.compress((",".join(["300"] * 785) + "\n").encode()), "outside 0..255"),
        (0, gzip.compress(b"\n"), "empty domain: no samples in .*mnist_5k.csv.gz"),
        (1, b"\x1f\x8b garbage", "corrupt or unreadable IDX file: .*t10k-images"),
        (1, gzip.compress(b"PK\x03\x04" + bytes(100)), "not an IDX file: .*bad magic number"),
        (1, gzip.compress(b""), r"not an IDX file: .*bad magic number \(empty\)"),
        (1, gzip.compress(bytes([0, 0, 8, 3, 0, 0])), "header cut short"),
        (1, _idx(np.zeros((10, 28, 28)))[:-30], "corrupt or unreadable IDX file"),
        (1, gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2, 3, 4])), "4 data bytes"),
        (1, _idx(np.zeros((10, 27, 28))), r"holds uint8 \(10, 27, 28\), expected uint8"),
        (2, _idx(np.zeros(9)), r"holds uint8 \(9,\), expected integers \(10,\)"),
        (2, _idx(np.full(10, 10)), r"labels of .*t10k-labels-idx1-ubyte.gz \(.*\) span 10..10, expected 0..9"),
        (0, gzip.compress((",".join(["0"] * 784 + ["10"]) + "\n").encode()),
         r"labels of .*mnist_5k.csv.gz \(.*\) span 10..10, expected 0..9"),
        # the label first, as other MNIST CSVs have it: the last column is the last pixel, 0 in MNIST
        (0, gzip.compress("".join(",".join([str(i % 10)] + ["7"] * 783 + ["0"]) + "\n" for i in range(20)).encode()),
         "the label comes first in its rows; expected the 784 pixels, then the label"),
    ],
)
def test_corrupt_mnist_files(tmp_path, file, content, match):
    folder = _write_mnist(tmp_path)
    (folder / MNIST_FILES[file]).write_bytes(content)
    with pytest.raises(DataError, match=match) as exc:
        load_domain("digits-full", "mnist", data_root=tmp_path)
    assert "\n" not in str(exc.value) and "digits-full" in str(exc.value)


def test_truncated_real_files(root, tmp_path):
    for rel, cut in [("mnist/mnist_5k.csv.gz", 500_000), ("usps/usps.h5", 1_000_000)]:
        path = tmp_path / rel
        path.parent.mkdir(exist_ok=True)
        path.write_bytes((root / rel).read_bytes()[:cut])
    for name in MNIST_FILES[1:]:
        shutil.copy(root / "mnist" / name, tmp_path / "mnist" / name)
    with pytest.raises(DataError, match="corrupt or unreadable CSV file: .*mnist_5k.csv.gz"):
        load_domain("digits-full", "M", data_root=tmp_path)
    with pytest.raises(DataError, match="corrupt or unreadable HDF5 file: .*usps.h5 .*truncated"):
        load_domain("digits-full", "U", data_root=tmp_path)


def test_replaced_file_is_read_again(tmp_path):
    _write_mnist(tmp_path, n_csv=20)
    assert len(load_domain("digits-full", "M", data_root=tmp_path)) == 30
    _write_mnist(tmp_path, n_csv=40)
    assert len(load_domain("digits-full", "M", data_root=tmp_path)) == 50
    (tmp_path / "mnist" / MNIST_FILES[0]).write_bytes(b"broken")
    with pytest.raises(DataError, match="corrupt or unreadable CSV file"):
        load_domain("digits-full", "M", data_root=tmp_path)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"test/target": None}, r"lacks key\(s\) test/target; it holds: test/data, train/data"),
        ({"train/data": np.array([b"a", b"b"])}, "key 'train/data' .* is not a numeric array"),
        ({"test/data": np.zeros((5, 16, 16))}, r"test/data has shape \(5, 16, 16\)"),
        ({"train/target": np.arange(11)}, r"train/target \(11,\), expected \(N, 256\) and \(N,\)"),
        ({"test/target": np.array([0.0, 1.5, 2, 3, 4])}, "test/target holds labels that are"),
        ({"test/target": np.array([0.0, 1, 2, np.nan, 4])}, "test/target holds labels that are"),
        ({"test/target": np.array([0.0, 1, 2, 3, 10])}, "labels span 0..10, expected 0..9"),
        ({"test/data": np.full((5, 256), np.nan, np.float32)}, "NaN or infinite features"),
        ({"test/data": np.full((5, 256), 255.0, np.float32)}, r"test/data spans 255..255, expected grey levels in \[0, 1\]"),
        ({"train/data": np.full((12, 256), -1.0)}, r"train/data spans -1..-1, expected grey levels in \[0, 1\]"),
    ],
)
def test_bad_usps_file(tmp_path, override, match):
    _write_usps(tmp_path, **override)
    with pytest.raises(DataError, match=match) as exc:
        load_domain("digits-full", "usps", data_root=tmp_path)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("content", [b"", b"garbage" * 50, b"\x89HDF\r\n\x1a\n" + bytes(50)])
def test_corrupt_usps_file(tmp_path, content):
    path = tmp_path / "usps" / "usps.h5"
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"corrupt or unreadable HDF5 file: {path} ") as exc:
        load_domain("digits-full", "U", data_root=tmp_path)
    assert "\n" not in str(exc.value)


def test_usps_without_h5py(tmp_path, monkeypatch):
    _write_usps(tmp_path)
    monkeypatch.setitem(sys.modules, "h5py", None)  # `import h5py` now raises ImportError
    with pytest.raises(DataError, match="usps.h5 .*needs h5py: pip install h5py"):
        load_domain("digits-full", "U", data_root=tmp_path)
