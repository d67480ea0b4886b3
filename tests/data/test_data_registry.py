"""The dataset registry: names, aliases, inference, default data root, user datasets."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import re
import warnings

import numpy as np
import pytest
import torch

from dalib.data import (
    DatasetInfo,
    Domain,
    LoadRequest,
    default_data_root,
    get_dataset,
    infer_dataset,
    list_datasets,
    list_domains,
    load_domain,
    register_dataset,
)
from dalib.errors import DataError, RegistryError, UnknownNameError


def test_list_datasets_sorted():
    names = list_datasets()
    assert names == sorted(names)
    builtin = {"amazon-reviews", "digits", "image-folder", "office-caltech-surf"}
    # other tests may register their own small datasets; the built-ins are always there
    assert builtin <= set(names)


@pytest.mark.parametrize(
    ("name", "domains", "kind", "num_classes", "needs"),
    [
        ("digits", ("mnist", "usps"), "image", 10, "embedded"),
        (
            "office-caltech-surf",
            ("amazon", "caltech", "dslr", "webcam"),
            "features",
            10,
            "data_root",
        ),
        ("amazon-reviews", ("books", "dvd", "electronics", "kitchen"), "features", 2, "data_root"),
        ("image-folder", (), "image", None, "data_dir"),
    ],
)
def test_dataset_info(name, domains, kind, num_classes, needs):
    info = get_dataset(name)
    assert isinstance(info, DatasetInfo)
    assert (info.name, info.domains, info.kind, info.num_classes, info.needs) == (
        name,
        domains,
        kind,
        num_classes,
        needs,
    )
    assert info.description
    assert set(info.aliases.values()) <= set(domains)
    assert get_dataset(name.upper()) is info


def test_unknown_dataset_lists_known():
    with pytest.raises(UnknownNameError) as exc:
        get_dataset("office31")
    msg = str(exc.value)
    assert "office31" in msg and "\n" not in msg
    for name in list_datasets():
        assert name in msg
    with pytest.raises(UnknownNameError):
        load_domain("nope", "A")


@pytest.mark.parametrize(
    ("dataset", "given", "canonical"),
    [
        ("digits", "M", "mnist"),
        ("digits", "m", "mnist"),
        ("digits", "U", "usps"),
        ("digits", "MNIST", "mnist"),
        ("digits", " usps ", "usps"),
        ("office-caltech-surf", "A", "amazon"),
        ("office-caltech-surf", "c", "caltech"),
        ("office-caltech-surf", "Caltech10", "caltech"),
        ("office-caltech-surf", "D", "dslr"),
        ("office-caltech-surf", "w", "webcam"),
        ("office-caltech-surf", "Webcam", "webcam"),
        ("amazon-reviews", "B", "books"),
        ("amazon-reviews", "d", "dvd"),
        ("amazon-reviews", "E", "electronics"),
        ("amazon-reviews", "elec", "electronics"),
        ("amazon-reviews", "ELEC", "electronics"),
        ("amazon-reviews", "k", "kitchen"),
    ],
)
def test_resolve_aliases_case_insensitive(dataset, given, canonical):
    assert get_dataset(dataset).resolve(given) == canonical


def test_unknown_domain_lists_domains_and_aliases():
    with pytest.raises(UnknownNameError) as exc:
        get_dataset("office-caltech-surf").resolve("Q")
    msg = str(exc.value)
    assert "'Q'" in msg and "office-caltech-surf" in msg and "\n" not in msg
    for part in ("amazon (A)", "caltech (C", "dslr (D)", "webcam (W)"):
        assert part in msg
    with pytest.raises(UnknownNameError):
        load_domain("digits", "svhn")
    assert isinstance(exc.value, KeyError)  # UnknownNameError is a KeyError too


@pytest.mark.parametrize(
    ("src", "tgt", "dataset"),
    [
        ("mnist", "usps", "digits"),
        ("M", "U", "digits"),
        ("u", "m", "digits"),
        ("A", "W", "office-caltech-surf"),
        ("amazon", "caltech", "office-caltech-surf"),
        ("D", "W", "office-caltech-surf"),  # D is ambiguous alone, W decides
        ("C", "D", "office-caltech-surf"),
        ("B", "D", "amazon-reviews"),
        ("books", "elec", "amazon-reviews"),
        ("K", "dvd", "amazon-reviews"),
    ],
)
def test_infer_dataset(src, tgt, dataset):
    assert infer_dataset(src, tgt) == dataset


@pytest.mark.parametrize(("src", "tgt"), [("D", "D"), ("dslr", "dvd"), ("M", "A"), ("x", "y")])
def test_infer_dataset_ambiguous_or_unknown(src, tgt):
    with pytest.raises(UnknownNameError) as exc:
        infer_dataset(src, tgt)
    msg = str(exc.value)
    assert "--dataset" in msg and "\n" not in msg


def test_infer_never_picks_image_folder():
    with pytest.raises(UnknownNameError):
        infer_dataset("amazon_images", "webcam_images")


def test_default_data_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DALIB_DATA_ROOT", str(tmp_path))
    assert default_data_root() == tmp_path


@pytest.mark.parametrize("where", ["shared/data", "../shared/data"])
def test_default_data_root_candidates(monkeypatch, tmp_path, where):
    monkeypatch.delenv("DALIB_DATA_ROOT", raising=False)
    cwd = tmp_path / "repo"
    cwd.mkdir()
    (cwd / where).mkdir(parents=True)
    monkeypatch.chdir(cwd)
    assert default_data_root() == (cwd / where).resolve()


def test_a_candidate_the_user_may_not_search_is_not_there(monkeypatch, tmp_path):
    """From a working directory this user cannot search (sudo -u nobody from /root), is_dir()
    raised PermissionError: "Permission denied: shared/data", a folder the user never named."""
    from pathlib import Path

    monkeypatch.delenv("DALIB_DATA_ROOT", raising=False)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "shared")  # ../shared/data: there, once the first is passed over
    is_dir = Path.is_dir

    def searched(self, *args, **kwargs):
        if str(self) == "shared/data":
            raise PermissionError(13, "Permission denied", str(self))
        return is_dir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "is_dir", searched)
    assert default_data_root() == (tmp_path / "shared" / "data").resolve()


def test_the_working_folders_shared_data_comes_before_its_parents(monkeypatch, tmp_path):
    monkeypatch.delenv("DALIB_DATA_ROOT", raising=False)
    cwd = tmp_path / "repo"
    (cwd / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.chdir(cwd)
    assert default_data_root() == (cwd / "shared" / "data").resolve()


def test_no_data_root_anywhere(monkeypatch, tmp_path):
    monkeypatch.delenv("DALIB_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_data_root() is None
    with pytest.raises(DataError, match="no data root .*set --data-root"):
        load_domain("office-caltech-surf", "A")


def test_missing_data_root(tmp_path):
    with pytest.raises(DataError) as exc:
        load_domain("amazon-reviews", "B", data_root=tmp_path / "nowhere")
    msg = str(exc.value)
    assert str(tmp_path / "nowhere") in msg and "amazon-reviews" in msg and "books" in msg


def test_bad_image_size():
    with pytest.raises(DataError, match="image size"):
        load_domain("digits", "M", image_size=0)


def _toy_loader(req: LoadRequest) -> Domain:
    n = {"left": 5, "right": 7}[req.domain]
    x = np.arange(n * 3, dtype=np.float64).reshape(n, 3)
    return Domain.from_arrays(
        req.domain, x, np.arange(n) % 2, classes=["a", "b"], dataset_name=req.info.name
    )


def test_register_user_dataset(isolated_registry):
    info = DatasetInfo(
        name="toy",
        description="a toy",
        domains=("left", "right"),
        aliases={"L": "left", "R": "right"},
        kind="features",
        num_classes=2,
        needs="embedded",
    )
    register_dataset(info, _toy_loader)
    assert "toy" in list_datasets()
    assert infer_dataset("l", "R") == "toy"
    assert list_domains("toy") == ["left", "right"]
    dom = load_domain("toy", "r")
    assert (dom.name, len(dom), dom.input_shape, dom.num_classes, dom.classes) == (
        "right",
        7,
        (3,),
        2,
        ["a", "b"],
    )
    assert dom.x.dtype == torch.float32 and dom.y.dtype == torch.int64
    with pytest.raises(RegistryError, match="already registered"):
        register_dataset(info, lambda req: _toy_loader(req))
    # the same loader again (a notebook cell run twice) replaces the entry
    register_dataset(dataclasses.replace(info, description="the toy, again"), _toy_loader)
    assert get_dataset("toy").description == "the toy, again"


def test_register_rejects_bad_infos(isolated_registry):
    with pytest.raises(RegistryError, match="alias"):
        DatasetInfo(name="t", description="", domains=("a",), aliases={"X": "b"})
    with pytest.raises(RegistryError, match="ambiguous"):
        DatasetInfo(name="t", description="", domains=("a", "b"), aliases={"B": "a"})
    with pytest.raises(RegistryError, match="twice"):
        DatasetInfo(name="t", description="", domains=("a", "A"))
    with pytest.raises(RegistryError, match="kind"):
        DatasetInfo(name="t", description="", domains=("a",), kind="text")
    with pytest.raises(RegistryError, match="needs"):
        DatasetInfo(name="t", description="", domains=("a",), needs="web")
    with pytest.raises(RegistryError):
        register_dataset("toy", _toy_loader)
    with pytest.raises(RegistryError):
        register_dataset(DatasetInfo(name="t", description="", domains=("a",)), None)


def test_loader_results_are_checked(isolated_registry):
    def not_a_domain(req):
        return (torch.zeros(3, 2), torch.zeros(3))

    def nan_domain(req):
        x = torch.zeros(4, 2)
        x[1, 0] = float("nan")
        y = torch.zeros(4, dtype=torch.int64)
        return Domain("a", torch.utils.data.TensorDataset(x, y), 1, (2,), ["c"], x=x, y=y)

    def empty_domain(req):
        x, y = torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64)
        return Domain("a", torch.utils.data.TensorDataset(x, y), 1, (2,), ["c"], x=x, y=y)

    for name, loader in [("t1", not_a_domain), ("t2", nan_domain), ("t3", empty_domain)]:
        register_dataset(
            DatasetInfo(name=name, description="", domains=("a",), needs="embedded"), loader
        )
    with pytest.raises(RegistryError, match="not a Domain"):
        load_domain("t1", "a")
    with pytest.raises(DataError, match="NaN or infinite features in 1 sample"):
        load_domain("t2", "a")
    with pytest.raises(DataError, match="empty domain"):
        load_domain("t3", "a")


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "match"),
    [
        (np.zeros((0, 3)), np.zeros(0), {}, "empty domain"),
        (np.zeros((3, 2)), np.zeros(4), {}, "3 samples but 4 labels"),
        (np.array([[0.0, np.inf], [1.0, 2.0]]), np.zeros(2), {}, "NaN or infinite"),
        # finite in float64, not in float32: said as such, not as a NaN the data do not hold
        (np.array([[0.0, -1e39], [1.0, 2.0]]), np.zeros(2), {}, r"features up to 1e\+39 in .* overflow float32 \(up to 3.4e\+38\)"),
        (np.zeros((2, 2)), np.array([0.5, 1.0]), {}, "not integers"),
        (np.zeros((2, 2)), np.array([0, 2]), {"classes": ["a", "b"]}, "labels span 0..2"),
        (np.zeros((2, 2)), np.array([-2, 0]), {}, r"labels span -2..0 in .*: labels are class indices 0..C-1 \(map the "
                                                  r"labels to class indices, e.g. np.unique\(y, return_inverse=True\)\[1\]\)$"),
        # num_classes mends no negative label: it is not offered (it had been, and then failed again)
        (np.zeros((2, 2)), np.array([-2, 0]), {"num_classes": 6}, r"labels span -2..0, expected 0..5 in .* \(map the labels"),
        # the -1/+1 of binary tasks: mapped to 0/1 (the advice had been y=None, which dropped the labels)
        (np.zeros((4, 2)), np.array([-1, 1, 1, -1]), {}, r"labels are -1 and 1 in .*: labels are class indices 0..C-1, "
                                                         r"so give \(y \+ 1\) // 2 \(-1 marks an unlabelled sample\)$"),
        (np.zeros((3, 2)), np.array([0, 100_000, 1]), {}, r"labels span 0..100000 .*, or give num_classes=100001\)$"),
        # UNLABELLED marks no label: an unlabelled domain is y=None, and a partly labelled one is refused
        (np.zeros((2, 2)), np.array([-1, -1]), {"num_classes": 3}, r"labels span -1..-1 in .*: labels are class indices 0..C-1, .*UNLABELLED: give y=None"),
        (np.zeros((2, 2)), np.array([-1, 0]), {}, r"labels span -1..0 in .*a domain is labelled or not, not partly"),
        (np.zeros((2, 2)), np.array([0, 1]), {"classes": ["a"], "num_classes": 2}, "1 class names"),
        # a huge label is no class count: refused before a class list that long is built
        (np.zeros((10, 4)), np.r_[2**62, np.zeros(9, int)], {}, "labels span 0..4611686018427387904 .*0..C-1"),
        (np.zeros((2, 2)), np.array([1e20, 0.0]), {}, "labels span 0..1e\\+20, expected 0..C-1"),
        (np.zeros((2, 2)), np.array([np.nan, 0.0]), {}, "not integers"),
        (np.zeros((3, 2)), np.array(["a", "b", "a"]), {}, "labels must hold numbers, got dtype <U1 .*classes="),
        (np.array([["a", "b"]] * 2, dtype=object), np.zeros(2), {}, "features must hold numbers, got dtype object"),
        # as the shallow estimators say it: torch had dropped the imaginary part with a warning
        (np.fft.rfft(np.ones((4, 8))), np.zeros(4), {}, "features holds complex numbers: give real features in domain dom"),
        (np.zeros(6), np.zeros(6), {}, r"features of shape \(6,\) .*reshape to \(N, 1\)"),
        (np.zeros((6, 0)), np.zeros(6), {}, r"features of shape \(6, 0\)"),
    ],
)
def test_from_arrays_errors(x, y, kwargs, match):
    with pytest.raises(DataError, match=match):
        Domain.from_arrays("dom", x, y, **kwargs)


def test_from_arrays_takes_any_numpy_layout():
    """Arrays torch cannot view (reversed, flipped channels, big-endian as HDF5 and .mat files
    store them) are copied, not refused with torch's error."""
    x = np.random.default_rng(0).random((6, 3, 2, 2)).astype(">f4")
    y = (np.arange(6) % 3).astype(">i8")
    dom = Domain.from_arrays("dom", x[::-1, ::-1], y[::-1])
    np.testing.assert_array_equal(dom.x.numpy(), x[::-1, ::-1].astype(np.float32))
    assert dom.y.tolist() == [2, 1, 0, 2, 1, 0] and dom.x.dtype == torch.float32


def test_from_arrays_reads_what_the_shallow_estimators_read():
    """A sparse matrix is one line naming it (it was "must be numbers, got dtype object"), a
    DataFrame of bool or nullable Int64 columns is numbers, and read-only arrays (pandas'
    to_numpy) are copied, not shared with torch's warning that writing to them is undefined."""
    import warnings

    import pandas as pd
    import scipy.sparse

    with pytest.raises(DataError, match=r"^features is a sparse matrix: give a dense array \(features.toarray\(\)\) in domain"):
        Domain.from_arrays("dom", scipy.sparse.csr_matrix(np.eye(3)), np.arange(3))
    frame = pd.DataFrame({"on": [True, False, True], "count": pd.array([1, 2, 3], dtype="Int64")})
    assert Domain.from_arrays("dom", frame, np.arange(3)).x.tolist() == [[1, 1], [0, 2], [1, 3]]
    # a column as labels (df["label"]): nullable integers are numbers; text is the line numpy's text gets
    assert Domain.from_arrays("dom", np.eye(3), pd.Series([0, 2, 1], dtype="Int64")).y.tolist() == [0, 2, 1]
    for text in (pd.Series(["cat", "dog", "cat"]), pd.Series(["cat", "dog", "cat"], dtype="category")):
        with pytest.raises(DataError, match=r"^labels must hold numbers, got dtype object in domain dom .*\(map "
                                            r"class names to indices 0..C-1 and pass classes=\)"):
            Domain.from_arrays("dom", np.eye(3), text)
    frozen = np.arange(3)
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Domain.from_arrays("dom", np.eye(3), frozen).y.tolist() == [0, 1, 2]


def test_features_that_float32_blurs_are_warned_about():
    """dalib runs in float32: a feature at 1e8 that spreads over a few units keeps a handful of
    values there, and every method learned from that, without a word."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    x[:, 3] = 5.0  # constant: nothing to lose
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Domain.from_arrays("dom", x, np.arange(200) % 2)  # centred data: no warning
        Domain.from_arrays("dom", x + 1e4, np.arange(200) % 2)  # still about 1e4 steps over its range
    x[:, 1] += 1e8
    with pytest.warns(UserWarning, match=r"^1 feature\(s\) of domain dom lose their detail in float32, .*"
                                         r"feature 1 spans 99999997.*subtract their mean"):
        Domain.from_arrays("dom", x, np.arange(200) % 2)


def test_features_that_float32_flushes_to_zero_are_warned_about():
    """float64 features below float32's smallest number became zeros, and the run trained to
    chance without a word, where features too large for float32 are refused."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Domain.from_arrays("dom", x * 1e-30, np.arange(200) % 2)  # small, but float32 still holds them
    x[:, 2] *= 1e-46
    with pytest.warns(UserWarning, match=r"^1 feature\(s\) of domain dom lose their detail in float32, .*"
                                         r"feature 2 spans -?[0-9.]+e-46\.\.[0-9.]+e-46; scale them up"):
        domain = Domain.from_arrays("dom", x, np.arange(200) % 2)
    assert not domain.x[:, 2].any()  # what the warning is about
    x[:, 2] = rng.normal(size=200) * 1e-43  # subnormal in float32: a few hundred steps left
    with pytest.warns(UserWarning, match=r"^1 feature\(s\) of domain dom .*feature 2 .*; scale them up"):
        Domain.from_arrays("dom", x, np.arange(200) % 2)


def test_from_arrays_warns_of_images_laid_out_channels_last_and_of_features_float32_cannot_square():
    """Both trained without a word: RGBA (N, 28, 28, 4) images as 28 channels of 28x4 pixels, and
    features at 1e20 to a constant output (batch norm's variance overflows)."""
    rng = np.random.default_rng(0)
    labels = np.arange(6) % 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Domain.from_arrays("dom", rng.random((6, 3, 28, 28)), labels)  # (N, C, H, W)
        for shape in ((6, 8, 4, 4), (6, 16, 128, 1), (6, 6, 9, 3), (6, 1, 28, 28)):  # as they are: C of HxW
            Domain.from_arrays("dom", rng.random(shape), labels)
        Domain.from_arrays("dom", rng.random((6, 4)) * 1e19, labels)  # squares still below float32's largest
    with pytest.warns(UserWarning, match=r"^images of shape \(6, 28, 28, 4\) in domain dom look channels last \(N, H, "
                                         r"W, C\), and dalib reads \(N, C, H, W\): 28 channels of 28x4 pixels; give "
                                         r"x.transpose\(0, 3, 1, 2\)"):
        Domain.from_arrays("dom", rng.random((6, 28, 28, 4)), labels)
    with pytest.warns(UserWarning, match=r"^images of shape \(6, 28, 28, 1\) .* 28 channels of 28x1 pixels"):
        Domain.from_arrays("dom", rng.random((6, 28, 28, 1)), labels)
    with pytest.warns(UserWarning, match=r"^features up to -?[0-9.]+e\+20 in domain dom: their squares overflow float32 "
                                         r"\(above 1.84e\+19\), the precision a deep run's network trains in.*"
                                         r"standardise each feature"):
        Domain.from_arrays("dom", rng.normal(size=(6, 4)) * 1e20, labels)


@pytest.mark.parametrize(("count", "kind"), [(3.0, " (a float)"), (np.float32(3.0), " (a float32)"), ("3", ""),
                                           (True, "")])
def test_from_arrays_takes_a_whole_number_of_classes(count, kind):
    with pytest.raises(DataError, match=rf"^num_classes must be an int, got {re.escape(repr(count))}{re.escape(kind)} "
                                        r"in domain dom$"):
        Domain.from_arrays("dom", np.eye(4), [0, 1, 2, 0], num_classes=count)
    for five in (np.int64(5), torch.tensor(5), torch.tensor([0, 4]).max() + 1):  # (y.max() + 1 of a tensor y)
        assert Domain.from_arrays("dom", np.eye(4), [0, 1, 2, 0], num_classes=five).num_classes == 5


def test_from_arrays_counts_the_classes_up_to_the_largest_label():
    """Labels 0 and 2 are three classes, one of them absent from this domain (a source that
    lacks a class the target has): the count is the largest label + 1, not the labels seen."""
    dom = Domain.from_arrays("dom", np.zeros((4, 3), np.float32), np.array([0, 2, 2, 0]))
    assert dom.num_classes == 3 and dom.classes == ["0", "1", "2"]


@pytest.mark.parametrize("bad", ["", "  ", None])
def test_missing_domain_name(bad):
    with pytest.raises(UnknownNameError, match="no domain name given for dataset digits"):
        load_domain("digits", bad)
    with pytest.raises(UnknownNameError):
        infer_dataset(bad, "usps")


def test_an_installed_package_brings_its_datasets_through_an_entry_point(isolated_registry, monkeypatch, tmp_path):
    """``[project.entry-points."dalib.datasets"]`` names a module whose import registers its
    datasets: load_domain, inference and ``dalib list`` find them without --plugin; a package
    that fails to import is listed, not fatal."""
    from importlib.metadata import EntryPoint

    from click.testing import CliRunner

    from dalib.cli import cli

    (tmp_path / "sensors_pkg.py").write_text(
        "import numpy as np\n"
        "from dalib.data import DatasetInfo, Domain, register_dataset\n"
        "def load(request):\n"
        "    x = np.arange(12, dtype=np.float32).reshape(6, 2)\n"
        "    return Domain.from_arrays(request.domain, x, np.arange(6) % 2, num_classes=2, dataset_name='sensors')\n"
        "register_dataset(DatasetInfo(name='sensors', description='sensor data', domains=('lab', 'field'),\n"
        "                             kind='features', num_classes=2, needs='embedded'), load)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    installed = importlib.metadata.entry_points
    # the datasets' group only: `dalib list` loads the methods' too, and an empty one left this
    # session's method registry without its methods for the tests after this one
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [
        EntryPoint("sensors", "sensors_pkg", group), EntryPoint("broken", "no_such_module_xyz", group),
        EntryPoint("hyphen", "my-sensors", group)] if group == isolated_registry.DATASET_ENTRY_POINT_GROUP
        else installed(group=group))
    monkeypatch.setattr(isolated_registry, "_dataset_entry_points_loaded", False)
    monkeypatch.setattr(isolated_registry, "_broken_datasets", {})
    assert len(load_domain("sensors", "lab")) == 6
    assert infer_dataset("lab", "field") == "sensors"
    out = CliRunner().invoke(cli, ["list"]).stdout
    assert "sensors" in out and "broken (datasets)" in out and "ModuleNotFoundError" in out
    assert "hyphen (datasets) my-sensors: RegistryError: names no module" in out


def test_a_domain_takes_a_networks_classes_by_name():
    """dalib eval scores a held-out domain that holds some of the run's classes: its labels are
    renumbered as the network's, matched by name."""
    import torch

    from dalib.data import Domain
    from dalib.errors import DataError

    d = Domain.from_arrays("held", np.zeros((3, 2), np.float32), np.array([0, 1, 1]), classes=["cat", "fox"])
    wide = d.with_classes(["ant", "cat", "dog", "fox"])
    assert wide.y.tolist() == [1, 3, 3] and [int(y) for _, y in wide.dataset] == [1, 3, 3]
    assert wide.classes == ["ant", "cat", "dog", "fox"] and wide.num_classes == 4 and torch.equal(wide.x, d.x)
    with pytest.raises(DataError, match=r"domain held has 1 class\(es\) the network does not know: fox \(it knows ant, cat\)"):
        d.with_classes(["ant", "cat"])


def test_from_arrays_refuses_labels_of_two_dimensions():
    """(N, C) one-hot labels had been flattened into N·C labels ("6 samples but 12 labels"), and
    (N/2, 2) ones taken as N labels, in silence; (N, 1) is one label per sample."""
    x = np.eye(6)
    with pytest.raises(DataError, match=r"^labels of shape \(6, 2\) in domain dom: give one class index per sample, "
                                        r"shape \(N,\) \(from one-hot labels or scores: y.argmax\(1\)\)$"):
        Domain.from_arrays("dom", x, np.eye(2)[[0, 1, 1, 0, 1, 0]])
    with pytest.raises(DataError, match=r"^labels of shape \(3, 2\)"):
        Domain.from_arrays("dom", x, np.array([[0, 1], [1, 0], [2, 2]]))
    assert Domain.from_arrays("dom", x, np.array([[0], [1], [1], [0], [2], [2]])).y.tolist() == [0, 1, 1, 0, 2, 2]


def test_from_arrays_needs_at_least_one_class():
    with pytest.raises(DataError, match=r"^num_classes must be at least 1, got 0 in domain dom$"):
        Domain.from_arrays("dom", np.eye(4), None, num_classes=0)


def test_a_name_taken_in_another_case_is_refused(isolated_registry):
    """Names are looked up exact first, then in any case: a package's ``Digits`` had been
    accepted and took ``--dataset Digits`` over, while ``--dataset DIGITS`` read the built-in."""
    info = DatasetInfo(name="Digits", description="", domains=("left", "right"), needs="embedded")
    with pytest.raises(RegistryError, match=r"^dataset 'Digits' is already registered as 'digits' "
                                            r"\(by dalib\.data\.digits\.load\): dataset names match in any case$"):
        register_dataset(info, _toy_loader)
    assert "Digits" not in list_datasets()
    register_dataset(dataclasses.replace(info, name="toy"), _toy_loader)
    with pytest.raises(RegistryError, match=r"^dataset 'TOY' is already registered as 'toy' .*in any case$"):
        register_dataset(dataclasses.replace(info, name="TOY"), _toy_loader)  # the same loader, too


def test_a_loader_must_name_the_domain_it_was_asked_for(isolated_registry):
    """A loader's Domain named "WRONG" trained, and the run recorded "WRONG" as its source,
    which dalib eval then could not load (unknown domain 'WRONG')."""
    def wrong(req):
        return Domain.from_arrays("WRONG", np.eye(2), np.arange(2))

    register_dataset(DatasetInfo(name="t", description="", domains=("a",), aliases={"A1": "a"},
                                 needs="embedded"), wrong)
    with pytest.raises(RegistryError, match=r"^the loader of dataset t returned domain 'WRONG' for domain 'a': "
                                            r"name it request\.domain$"):
        load_domain("t", "A1")
    # a name that resolves to the domain asked for (a folder spelt Amazon for amazon) loads again
    isolated_registry.unregister_dataset("t")
    register_dataset(DatasetInfo(name="t", description="", domains=("a",), needs="embedded"),
                     lambda req: Domain.from_arrays("A", np.eye(2), np.arange(2)))
    assert load_domain("t", "a").name == "A"


def test_a_packages_embedded_dataset_is_not_said_to_be_dalibs(isolated_registry, tmp_path):
    """--data-root given to a package's dataset that holds its own data: the warning said it
    was "embedded in dalib"."""
    def load(req):
        return Domain.from_arrays(req.domain, np.eye(2), np.arange(2))

    register_dataset(DatasetInfo(name="own", description="", domains=("a",), needs="embedded"), load)
    with pytest.warns(UserWarning, match=r"^dataset own holds its data itself \(needs='embedded', \S+\.load\) and "
                                         r"reads no data root: .* is not used$"):
        load_domain("own", "a", data_root=str(tmp_path))


def test_a_dataset_whose_package_failed_says_why(isolated_registry, monkeypatch):
    """An installed package that failed to import left only "unknown dataset 'sensors'; known:
    ...", where an unknown method whose plugin failed says why."""
    from importlib.metadata import EntryPoint

    installed = importlib.metadata.entry_points
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [
        EntryPoint("sensors", "no_such_module_xyz", group)] if group == isolated_registry.DATASET_ENTRY_POINT_GROUP
        else installed(group=group))
    monkeypatch.setattr(isolated_registry, "_dataset_entry_points_loaded", False)
    monkeypatch.setattr(isolated_registry, "_broken_datasets", {})
    for name in ("sensors", "Sensors"):
        with pytest.raises(UnknownNameError, match=rf"^unknown dataset '{name}' \(plugin 'sensors' failed to load: "
                                                   r"no_such_module_xyz: ModuleNotFoundError: No module named "
                                                   r"'no_such_module_xyz'\); known: amazon-reviews, .*digits.*$"):
            load_domain(name, "lab")
    with pytest.raises(UnknownNameError, match=r"^unknown dataset 'other'; known: "):
        get_dataset("other")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"domains": "lab"}, r"dataset t: domains must be a tuple of names, not 'lab' \(one domain: \('lab',\)\)"),
    ({"domains": ()}, r"dataset t: no domains given: name them \(only a dataset with needs='data_dir' has none, "
                      r"its domains being the sub-folders of --data\)"),
    ({"domains": (" lab ",)}, r"dataset t: domain ' lab ' is not a name: give a non-empty string without spaces "
                              r"around it"),
    ({"domains": ("lab", "")}, r"dataset t: domain '' is not a name: .*"),
    ({"domains": ("lab", 3)}, r"dataset t: domain 3 is not a name: .*"),
    ({"aliases": None}, r"dataset t: aliases must be a dict of alias -> domain name, not None"),
    ({"aliases": {"L ": "lab"}}, r"dataset t: alias 'L ' is not a name: .*"),
    ({"num_classes": 0}, r"dataset t: num_classes must be a positive int or None, not 0"),
    ({"num_classes": -3}, r"dataset t: num_classes must be a positive int or None, not -3"),
    ({"num_classes": 2.5}, r"dataset t: num_classes must be a positive int or None, not 2\.5"),
    ({"num_classes": "4"}, r"dataset t: num_classes must be a positive int or None, not '4'"),
    ({"num_classes": True}, r"dataset t: num_classes must be a positive int or None, not True"),
    ({"name": ""}, r"a dataset's name must be a non-empty string, not ''"),
    ({"name": 3}, r"a dataset's name must be a non-empty string, not 3"),
])
def test_a_dataset_info_is_checked(kwargs, message):
    """Each was accepted: "lab" (("lab") without its comma) as the domains l, a and b, a count
    of 0, -3, 2.5, "4" or True classes, a name "" or 3, a domain " lab " that no name given can
    choose (it is stripped); aliases=None failed with an AttributeError."""
    given = {"name": "t", "description": "", "domains": ("lab", "field"), **kwargs}
    with pytest.raises(RegistryError, match=rf"^{message}$"):
        DatasetInfo(**given)
    assert DatasetInfo(name="t", description="", domains=["lab"], num_classes=np.int64(3)).num_classes == 3
    assert DatasetInfo(name="t", description="", domains=(), needs="data_dir").domains == ()


class _Loader:
    """A loader of a class: a callable object."""

    def __call__(self, req):
        return _toy_loader(req)


def test_the_same_loader_object_or_partial_registered_again_replaces_it(isolated_registry):
    """A notebook cell run again that registers ``NpzLoader(...)`` or ``functools.partial(load,
    ...)`` had been refused: "already registered (by __main__.NpzLoader)"."""
    import functools

    info = DatasetInfo(name="toy", description="", domains=("left", "right"), needs="embedded")
    here = re.escape(__name__)
    for first, again, by, other in [
        (_Loader(), _Loader(), rf"{here}\._Loader", _toy_loader),
        (functools.partial(_toy_loader), functools.partial(_toy_loader), rf"functools\.partial\({here}\._toy_loader\)",
         functools.partial(_Loader())),
    ]:
        isolated_registry.unregister_dataset("toy")
        register_dataset(info, first)
        register_dataset(dataclasses.replace(info, description="again"), again)
        assert get_dataset("toy").description == "again" and len(load_domain("toy", "left")) == 5
        with pytest.raises(RegistryError, match=rf"^dataset 'toy' is already registered \(by {by}\)$"):
            register_dataset(info, other)
    with pytest.raises(RegistryError, match="already registered"):  # other arguments: another loader
        register_dataset(info, functools.partial(_toy_loader, "other arguments"))
    with pytest.raises(RegistryError, match="already registered"):  # the class is not an instance of it
        register_dataset(info, _Loader)


def test_unregister_dataset(isolated_registry):
    """There was no way to take a dataset back, as unregister_method does for methods: a
    notebook's renamed loader could not replace the one registered under its name."""
    info = DatasetInfo(name="toy", description="", domains=("left", "right"), needs="embedded")
    register_dataset(info, _toy_loader)
    isolated_registry.unregister_dataset("toy")
    isolated_registry.unregister_dataset("toy")  # (gone already: nothing to do)
    assert "toy" not in list_datasets()
    with pytest.raises(UnknownNameError, match=r"^unknown dataset 'toy'; known: "):
        get_dataset("toy")
    register_dataset(info, lambda req: _toy_loader(req))
    assert len(load_domain("toy", "right")) == 7

    def cell(req):  # a notebook's loader, renamed since it was registered
        return _toy_loader(req)

    def renamed(req):
        return _toy_loader(req)

    cell.__module__ = renamed.__module__ = "__main__"
    cell.__qualname__, renamed.__qualname__ = "cell", "renamed"
    register_dataset(dataclasses.replace(info, name="cell"), cell)
    with pytest.raises(RegistryError, match=r"^dataset 'cell' is already registered \(by __main__\.cell; to replace "
                                            r"it in this session: dalib\.data\.registry\.unregister_dataset\('cell'\) "
                                            r"first\)$"):
        register_dataset(dataclasses.replace(info, name="cell"), renamed)
    isolated_registry.unregister_dataset("cell")
    register_dataset(dataclasses.replace(info, name="cell"), renamed)
    assert len(load_domain("cell", "left")) == 5
