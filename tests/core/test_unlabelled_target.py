"""A real target domain has no labels: it trains the same network, and nothing is scored on it."""

from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dalib
from dalib.cli import cli
from dalib.data import DatasetInfo, Domain, list_datasets, register_dataset
from dalib.errors import DataError
from dalib.runner import RunConfig, load_checkpoint, run


def test_an_unlabelled_target_trains_the_same_network_and_is_not_scored(tmp_path, toy_dataset, unlabelled_dataset):
    """Training never reads a target label, so dropping them changes no weight: the run is the
    labelled one bit for bit, and only the reported target accuracy goes (null, not 0)."""
    kw = dict(method="dann", src="src", tgt="tgt", steps=20, batch_size=16, eval_every=10, method_config={"hidden": 32})
    labelled = run(RunConfig(dataset=toy_dataset, **kw), tmp_path / "labelled", progress_bar=False)
    blind = run(RunConfig(dataset=unlabelled_dataset, **kw), tmp_path / "blind", progress_bar=False)
    assert blind.target_accuracy is None and labelled.target_accuracy is not None
    assert blind.source_accuracy == labelled.source_accuracy
    # (that the weights are the labelled run's, bit for bit, tests/plugins/test_contract.py checks for every method)
    assert json.loads((tmp_path / "blind" / "result.json").read_text())["target_accuracy"] is None
    assert [h.get("target_acc") for h in blind.history if "source_acc" in h] == [None, None]  # steps 10 and 20
    # the network predicts the unlabelled target through load_model
    model = dalib.load_model(tmp_path / "blind")
    x = Domain.from_arrays("tgt", np.zeros((3, 8), dtype=np.float32), None, num_classes=2).x
    assert model(x).logits.shape == (3, 2)


def test_the_cli_and_the_shallow_form_say_there_is_nothing_to_score(tmp_path, unlabelled_dataset):
    res = CliRunner().invoke(cli, ["run", "coral", "--dataset", unlabelled_dataset, "--src", "src", "--tgt", "tgt",
                                   "--out", str(tmp_path / "shallow"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "target accuracy: n/a (the target has no labels)" in res.stdout
    assert json.loads((tmp_path / "shallow" / "result.json").read_text())["target_accuracy"] is None
    res = CliRunner().invoke(cli, ["run", "source_only", "--mode", "deep", "--dataset", unlabelled_dataset, "--src",
                                   "tgt", "--tgt", "src", "--steps", "2", "--quiet"])
    assert res.exit_code == 2 and "the source domain 'tgt' has unlabelled samples" in res.stderr


def test_an_unlabelled_domain_needs_the_class_count():
    with pytest.raises(DataError, match="unlabelled domain needs num_classes or classes"):
        Domain.from_arrays("t", np.zeros((4, 2)), None)
    d = Domain.from_arrays("t", np.zeros((4, 2)), None, classes=["a", "b", "c"])
    assert d.num_classes == 3 and d.y.tolist() == [-1] * 4 and int(d.dataset[0][1]) == -1


def test_eval_writes_the_predictions_of_an_unlabelled_target(tmp_path, toy_dataset, unlabelled_dataset):
    import csv

    kw = dict(method="dann", src="src", tgt="tgt", steps=20, batch_size=16, method_config={"hidden": 32})
    labelled = run(RunConfig(dataset=toy_dataset, **kw), tmp_path / "labelled", progress_bar=False)
    run(RunConfig(dataset=unlabelled_dataset, **kw), tmp_path / "blind", progress_bar=False)
    runner = CliRunner()
    res = runner.invoke(cli, ["eval", str(tmp_path / "blind")])
    assert res.exit_code == 2 and "--predictions FILE writes its predictions" in res.stderr
    out = tmp_path / "blind.csv"
    res = runner.invoke(cli, ["eval", str(tmp_path / "blind"), "--predictions", str(out)])
    assert res.exit_code == 0, res.output
    assert "no labels to score; predictions of 300 samples in" in res.stdout
    blind = list(csv.DictReader(out.open()))
    assert [r["index"] for r in blind] == [str(i) for i in range(300)] and {r["label"] for r in blind} == {""}
    assert all(0.5 <= float(r["confidence"]) <= 1.0 for r in blind)  # two classes: the top one has >= 1/2
    # the same network (training never reads a target label) on the labelled target: the file's
    # predictions score exactly what the run reported
    res = runner.invoke(cli, ["eval", str(tmp_path / "labelled"), "--predictions", str(tmp_path / "labelled.csv")])
    assert f"accuracy {labelled.target_accuracy:.2f}%" in res.stdout
    rows = list(csv.DictReader((tmp_path / "labelled.csv").open()))
    assert [r["predicted"] for r in rows] == [r["predicted"] for r in blind]
    hits = sum(r["predicted"] == r["label"] for r in rows)
    assert 100.0 * hits / len(rows) == pytest.approx(labelled.target_accuracy)
    # an existing file is never overwritten, and a missing folder is named, both in one line
    before = out.read_bytes()
    (tmp_path / "dangling.csv").symlink_to(tmp_path / "nowhere" / "x.csv")  # refused before the work, not after
    for target, fragment in ((out, "already exists"), (tmp_path / "dangling.csv", "already exists: choose another"),
                             (tmp_path / "no" / "p.csv", "no folder")):
        res = runner.invoke(cli, ["eval", str(tmp_path / "blind"), "--predictions", str(target)])
        assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1 and fragment in res.stderr
    assert out.read_bytes() == before


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
def test_predictions_written_by_another_eval_meanwhile_are_kept(tmp_path, toy_dataset, monkeypatch, links):
    """Two evals of a job array writing one --predictions file: each had checked the name was
    free when it began and renamed its file over the name at its end, so both reported their
    predictions written and the first one's were gone. The file that got there first is kept
    and the other eval fails in one line, also on a file system without hard links."""
    import errno

    from dalib import runner as runner_module

    run(RunConfig(method="source_only", dataset=toy_dataset, src="src", tgt="tgt", steps=5, batch_size=16, mode="deep"),
        tmp_path / "run", progress_bar=False)
    out = tmp_path / "preds.csv"
    original = runner_module.predict

    def other_eval_first(*args, **kwargs):
        out.write_text("the other eval's predictions\n")  # written while this one predicts
        return original(*args, **kwargs)

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(runner_module, "predict", other_eval_first)
    if not links:
        monkeypatch.setattr(runner_module.os, "link", no_links)
    res = CliRunner().invoke(cli, ["eval", str(tmp_path / "run"), "--predictions", str(out)])
    assert res.exit_code == 2 and res.stderr.strip() == (
        f"dalib: error: {out} already exists: another process wrote it while this one ran (nothing is overwritten)")
    assert out.read_text() == "the other eval's predictions\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    monkeypatch.setattr(runner_module, "predict", original)
    out.unlink()
    res = CliRunner().invoke(cli, ["eval", str(tmp_path / "run"), "--predictions", str(out)])
    assert res.exit_code == 0 and out.read_text().startswith("index,predicted,confidence,label\n")


def test_an_image_folder_target_without_class_folders_trains_the_same_network(tmp_path):
    """DATA/DOMAIN/IMAGE is an unlabelled target: the run trains the network it trains on the
    same images filed in class folders, is not scored, and eval names each image it predicts."""
    import csv

    from PIL import Image

    rng = np.random.default_rng(0)
    data = tmp_path / "imgs"

    def save(path, shade):
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(rng.normal(shade, 30, (12, 12, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path)

    for i in range(6):
        save(data / "real" / "cat" / f"c{i}.png", 60)
        save(data / "real" / "dog" / f"d{i}.png", 190)
    for i in range(4):  # the same target images, in class folders and loose; sorted alike ("a*" < "b*")
        for cls, prefix, shade in (("cat", "a", 90), ("dog", "b", 220)):
            save(data / "sketch" / cls / f"{prefix}{i}.png", shade)
            (data / "sketch_blind").mkdir(exist_ok=True)
            (data / "sketch_blind" / f"{prefix}{i}.png").write_bytes((data / "sketch" / cls / f"{prefix}{i}.png").read_bytes())
    args = ["--data", str(data), "--src", "real", "--arch", "lenet", "--image-size", "16", "--steps", "4",
            "--batch-size", "4", "--quiet", "--set", "hidden=16"]
    runner = CliRunner()
    for tgt in ("sketch", "sketch_blind"):
        res = runner.invoke(cli, ["run", "dann", *args, "--tgt", tgt, "--out", str(tmp_path / tgt)])
        assert res.exit_code == 0, res.output
    assert "target accuracy: n/a (the target has no labels)" in res.stdout
    blind = load_checkpoint(tmp_path / "sketch_blind" / "checkpoint.pt")["model"]
    labelled = load_checkpoint(tmp_path / "sketch" / "checkpoint.pt")["model"]
    assert blind.keys() == labelled.keys()
    assert all(torch.equal(blind[k], labelled[k]) for k in blind)
    out = tmp_path / "preds.csv"
    res = runner.invoke(cli, ["eval", str(tmp_path / "sketch_blind"), "--predictions", str(out)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open()))
    assert [r["file"] for r in rows] == [f"{p}{i}.png" for p in "ab" for i in range(4)]
    assert {r["label"] for r in rows} == {""} and {r["predicted"] for r in rows} <= {"cat", "dog"}
    res = runner.invoke(cli, ["eval", str(tmp_path / "sketch"), "--predictions", str(tmp_path / "labelled.csv")])
    labelled_rows = list(csv.DictReader((tmp_path / "labelled.csv").open()))
    assert [r["file"] for r in labelled_rows] == [f"{c}/{p}{i}.png" for c, p in (("cat", "a"), ("dog", "b")) for i in range(4)]
    assert [r["predicted"] for r in labelled_rows] == [r["predicted"] for r in rows]
    # new photos later, in a data folder of their own (no class folders anywhere): predicted with the run's classes
    (tmp_path / "newdata" / "batch2").mkdir(parents=True)
    for name in ("a0.png", "b3.png"):
        (tmp_path / "newdata" / "batch2" / name).write_bytes((data / "sketch_blind" / name).read_bytes())
    res = runner.invoke(cli, ["eval", str(tmp_path / "sketch_blind"), "--data", str(tmp_path / "newdata"),
                              "--domain", "batch2", "--predictions", str(tmp_path / "batch2.csv")])
    assert res.exit_code == 0, res.output
    later = list(csv.DictReader((tmp_path / "batch2.csv").open()))
    assert [(r["file"], r["predicted"]) for r in later] == [(r["file"], r["predicted"]) for r in rows if r["file"] in ("a0.png", "b3.png")]
    # a resume of an image-folder run compares the hyperparameters as resolved: naming a default is the same run
    (tmp_path / "sketch" / "result.json").unlink()
    res = runner.invoke(cli, ["run", "dann", *args, "--tgt", "sketch", "--out", str(tmp_path / "sketch"), "--resume",
                              "--set", "trade_off=1"])
    assert res.exit_code == 0, res.output
    # --data names a folder of images, whatever dataset the network was trained on
    res = runner.invoke(cli, ["eval", str(tmp_path / "sketch"), "--data", str(tmp_path / "newdata"), "--domain",
                              "batch2", "--predictions", str(tmp_path / "again.csv")])
    assert res.exit_code == 0, res.output
    # an unlabelled folder cannot be the source
    res = runner.invoke(cli, ["run", "source_only", "--data", str(data), "--src", "sketch_blind", "--tgt", "real",
                              "--arch", "lenet", "--image-size", "16", "--steps", "2", "--quiet"])
    assert res.exit_code == 2 and "the source domain 'sketch_blind' has unlabelled samples" in res.stderr
    # a held-out folder that files some of the run's classes is scored with the run's labels, by name
    for i in range(4):
        path = tmp_path / "held" / "F" / "dog" / f"b{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((data / "sketch" / "dog" / f"b{i}.png").read_bytes())
    res = runner.invoke(cli, ["eval", str(tmp_path / "sketch"), "--data", str(tmp_path / "held"), "--domain", "F",
                              "--predictions", str(tmp_path / "held.csv")])
    assert res.exit_code == 0, res.output
    held = list(csv.DictReader((tmp_path / "held.csv").open()))
    dogs = [r for r in labelled_rows if r["label"] == "dog"]
    assert [(r["file"], r["predicted"], r["label"]) for r in held] == [(r["file"], r["predicted"], "dog") for r in dogs]
    right = sum(r["predicted"] == "dog" for r in dogs)
    assert f"accuracy {100 * right / len(dogs):.2f}%" in res.stdout
    (tmp_path / "held" / "F" / "fox").mkdir()
    (tmp_path / "held" / "F" / "fox" / "f.png").write_bytes((data / "sketch" / "dog" / "b0.png").read_bytes())
    res = runner.invoke(cli, ["eval", str(tmp_path / "sketch"), "--data", str(tmp_path / "held"), "--domain", "F"])
    assert res.exit_code == 2 and "domain F has 1 class(es) the network does not know: fox (it knows cat, dog)" in res.stderr
    # --dataset names another dataset: the run's image folder is not passed to it (a dataset that reads no
    # folder would refuse one); the domain is loaded and refused for its shape
    res = runner.invoke(cli, ["eval", str(tmp_path / "sketch"), "--dataset", "digits", "--domain", "usps"])
    assert res.exit_code == 2 and "domain usps holds 10 classes of shape (1, 16, 16)" in res.stderr, res.output


def test_a_target_that_names_its_classes_otherwise_is_refused(tmp_path):
    """The same class count in another order: the run's score would compare the target's labels
    with the wrong logits (dalib eval refused it; dalib run used to report it)."""
    rng = np.random.default_rng(0)
    names = ["a", "b", "c"]

    def load(request):
        order = names if request.domain == "order-src" else names[::-1]
        return Domain.from_arrays(request.domain, rng.normal(size=(40, 4)), rng.integers(0, 3, 40), classes=order)

    if "named-order" not in list_datasets():
        register_dataset(DatasetInfo(name="named-order", description="class lists in two orders (tests)",
                                     domains=("order-src", "order-tgt"), kind="features", num_classes=3, needs="embedded",
                                     inferable=False), load)
    cfg = RunConfig(method="source_only", dataset="named-order", src="order-src", tgt="order-tgt", steps=2, batch_size=8,
                    mode="deep")
    with pytest.raises(DataError, match=r"the target names its classes otherwise than the source: c \(source: a\)"):
        run(cfg, None, progress_bar=False)
    run(dataclasses.replace(cfg, tgt="order-src"), None, progress_bar=False)  # the same list: fine


def test_predictions_keep_file_names_that_are_not_utf8(tmp_path):
    """A name from an old archive (Latin-1 bytes) is written back as its bytes, not a crash."""
    import csv

    from PIL import Image

    root = tmp_path / "data"
    for domain in ("src", "tgt"):
        for k, cls in enumerate(("cat", "dog")):
            (root / domain / cls).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (60 * k + 10 * i, 0, 0)).save(root / domain / cls / f"{i}.png")
    odd = os.fsdecode(b"caf\xe9.png")  # not UTF-8: Python holds the byte as a surrogate
    Image.new("RGB", (8, 8), (200, 0, 0)).save(root / "tgt" / "dog" / odd)
    runner = CliRunner()
    res = runner.invoke(cli, ["run", "source_only", "--data", str(root), "--src", "src", "--tgt", "tgt", "--steps",
                              "2", "--batch-size", "4", "--image-size", "8", "--quiet", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "p.csv"
    res = runner.invoke(cli, ["eval", str(tmp_path / "r"), "--predictions", str(out)])
    assert res.exit_code == 0, res.output
    assert b"caf\xe9.png" in out.read_bytes()
    rows = list(csv.DictReader(out.open(encoding="utf-8", errors="surrogateescape")))
    assert len(rows) == 9 and any(os.path.basename(r["file"]) == odd for r in rows)


class _Lazy(torch.utils.data.Dataset):
    """A dataset of one's own, read sample by sample, with labels 1..3 for 3 classes."""

    def __init__(self, n: int, targets: bool) -> None:
        self.x = torch.randn(n, 4, generator=torch.Generator().manual_seed(n))
        self.y = [i % 3 + 1 for i in range(n)]
        if targets:
            self.targets = self.y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


@pytest.mark.parametrize("targets", [False, True])
def test_labels_outside_the_class_range_of_a_dataset_of_ones_own_are_one_line(targets):
    """Such labels reached the loss as an IndexError (a traceback at the CLI); read from the
    dataset's targets before training, or batch by batch where it lists none."""
    name = f"lazy-labels-{int(targets)}"
    if name not in list_datasets():
        register_dataset(
            DatasetInfo(name=name, description="labels 1..3", domains=("ms", "mt"), kind="features", num_classes=3,
                        needs="embedded"),
            lambda req: Domain(name=req.domain, dataset=_Lazy(12, targets), num_classes=3, input_shape=(4,),
                               classes=["r", "g", "b"], dataset_name=name))
    cfg = RunConfig(method="dann", dataset=name, src="ms", tgt="mt", steps=3, batch_size=4, device="cpu")
    with pytest.raises(DataError, match=r"^a sample of domain 'ms' \(lazy-labels-\d\) is labelled 3: labels must lie "
                                        r"in 0\.\.2$"):
        run(cfg, None, progress_bar=False)


class _Given(torch.utils.data.Dataset):
    """A dataset of one's own whose samples carry the labels given (and x as given)."""

    def __init__(self, labels, x=None) -> None:
        self.labels = list(labels)
        self.x = torch.randn(len(self.labels), 4, generator=torch.Generator().manual_seed(3)) if x is None else x

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.x[i], self.labels[i]


def _given_dataset(name, labels, x=None):
    if name not in list_datasets():
        register_dataset(
            DatasetInfo(name=name, description="labels as given", domains=("gs", "gt"), kind="features", num_classes=2,
                        needs="embedded"),
            lambda req: Domain(name=req.domain, dataset=_Given(labels, x), num_classes=2, input_shape=(4,),
                               classes=["a", "b"], dataset_name=name))
    return name


@pytest.mark.parametrize(("labels", "workers", "said"), [
    ([0.4, 0.9] * 6, 0, "is labelled 0.4"),  # int() had made them class 0: both accuracies 0.0, unsaid
    ([0.4, 0.9] * 6, 2, "is labelled 0.4"),  # (read by worker processes, collated)
    (["0", "1"] * 6, 0, "is labelled '0' (str)"),  # had trained, then failed in the scoring: a traceback
], ids=["fractions", "fractions-workers", "text"])
def test_labels_that_are_no_class_indices_are_one_line_before_training(tmp_path, labels, workers, said):
    name = _given_dataset(f"given-{labels[0]!r}-{type(labels[0]).__name__}", labels)
    cfg = RunConfig(method="source_only", mode="deep", dataset=name, src="gs", tgt="gt", steps=3, batch_size=4, workers=workers)
    with pytest.raises(DataError, match=rf"^a sample of domain 'gs' \({re.escape(name)}\) {re.escape(said)}: labels are "
                                        "class indices"):
        run(cfg, tmp_path / "r", progress_bar=False)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_whole_number_labels_of_any_kind_are_class_indices():
    """Floats 1.0, numpy integers and one-element tensors: what datasets of one's own give."""
    labels = [1.0, np.int64(0), torch.tensor([1]), torch.tensor(0.0)] * 3
    name = _given_dataset("given-mixed-kinds", labels)
    cfg = RunConfig(method="source_only", mode="deep", dataset=name, src="gs", tgt="gt", steps=3, batch_size=4, eval_every=0)
    result = run(cfg, None, progress_bar=False)
    pred = result.model(torch.randn(12, 4, generator=torch.Generator().manual_seed(3)))[1].argmax(1)
    assert result.target_accuracy == pytest.approx(100.0 * float((pred == torch.tensor([1, 0, 1, 0] * 3)).float().mean()))


def test_nan_features_of_a_dataset_of_ones_own_are_named_not_blamed_on_the_learning_rate(tmp_path):
    x = torch.randn(12, 4, generator=torch.Generator().manual_seed(3))
    x[:, 0] = float("nan")
    name = _given_dataset("given-nan", [0, 1] * 6, x)
    cfg = RunConfig(method="source_only", mode="deep", dataset=name, src="gs", tgt="gt", steps=3, batch_size=4)
    with pytest.raises(DataError, match=r"^NaN or infinite features in 4 sample\(s\) of the source batch of step 1 "
                                        r"\(domain gs\)$"):  # it had said "lower --lr or the method's trade-off"
        run(cfg, tmp_path / "r", progress_bar=False)


def test_a_loader_that_gives_another_number_of_classes_than_its_dataset_declares_is_one_line():
    from dalib.data import load_domain
    from dalib.errors import RegistryError

    x = torch.zeros(6, 2)
    register_dataset(DatasetInfo(name="declares-two", description="3 classes, declared 2", domains=("d",),
                                 kind="features", num_classes=2, needs="embedded"),
                     lambda req: Domain.from_arrays(req.domain, x, np.arange(6) % 3, num_classes=3))
    with pytest.raises(RegistryError, match=r"^the loader of dataset declares-two returned domain d with 3 classes, "
                                            r"but the dataset declares num_classes=2$"):
        load_domain("declares-two", "d")


def test_eval_scores_a_numbered_target_by_position_as_the_run_did(tmp_path, toy_dataset):
    """A source that names its classes and a target given none (numbered 0..C-1): the run
    scores the target by position; eval had matched the numbers against the names and
    refused the run's own target ("classes the network does not know: 0, 1")."""
    from dalib.data.registry import _entry

    toy = _entry(toy_dataset)[1]
    if "toy-named-source" not in list_datasets():
        def load(request):
            d = toy(request)
            if request.domain == "src":
                return Domain.from_arrays("src", d.x, d.y, classes=["cat", "dog"], dataset_name="toy-named-source")
            return Domain.from_arrays("tgt", d.x, d.y, num_classes=2, dataset_name="toy-named-source")

        register_dataset(DatasetInfo(name="toy-named-source", description="named source classes, numbered target "
                                     "(tests)", domains=("src", "tgt"), kind="features", num_classes=2,
                                     needs="embedded"), load)
    done = run(RunConfig(method="source_only", dataset="toy-named-source", src="src", tgt="tgt", steps=20,
                         batch_size=16, mode="deep"), tmp_path / "run", progress_bar=False)
    res = CliRunner().invoke(cli, ["eval", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert f"accuracy {done.target_accuracy:.2f}%" in res.stdout
    # the source's own (named) domain is matched by name, as before
    res = CliRunner().invoke(cli, ["eval", str(tmp_path / "run"), "--domain", "src"])
    assert res.exit_code == 0 and f"accuracy {done.source_accuracy:.2f}%" in res.stdout, res.output


def test_numbers_among_the_other_domains_names_are_matched_by_name_by_run_and_eval(tmp_path, toy_dataset):
    """A numbered source (given no names) beside a target named "1", "0" (the same numbers in
    another order), or a source named "1", "2" beside a numbered target: the run scored the
    target by position (0% where by name it was 100%; eval, by name, said 100% or refused the
    run's own target). Sharing names, they are another order: refused, deep and shallow. Names
    that share nothing with the numbers are scored by position by both, whichever is numbered."""
    from dalib.data.registry import _entry

    toy = _entry(toy_dataset)[1]
    lists = {"swapped": (None, ["1", "0"]), "shifted": (["1", "2"], None), "named": (None, ["cat", "dog"])}
    for name, (src_names, tgt_names) in lists.items():
        if f"toy-{name}" in list_datasets():
            continue

        def load(request, src_names=src_names, tgt_names=tgt_names, name=name):
            d, names = toy(request), src_names if request.domain == "src" else tgt_names
            return Domain.from_arrays(request.domain, d.x, d.y, classes=names, num_classes=2,
                                      dataset_name=f"toy-{name}")

        register_dataset(DatasetInfo(name=f"toy-{name}", description="class lists (tests)", domains=("src", "tgt"),
                                     kind="features", num_classes=2, needs="embedded"), load)
    for name, mode in (("swapped", "deep"), ("swapped", "shallow"), ("shifted", "deep")):
        with pytest.raises(DataError, match=r"^the target names its classes otherwise than the source: "):
            run(RunConfig(method="source_only", dataset=f"toy-{name}", src="src", tgt="tgt", steps=2, batch_size=8,
                          mode=mode), None, progress_bar=False)
    done = run(RunConfig(method="source_only", dataset="toy-named", src="src", tgt="tgt", steps=20, batch_size=16,
                         mode="deep"), tmp_path / "run", progress_bar=False)
    res = CliRunner().invoke(cli, ["eval", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert f"accuracy {done.target_accuracy:.2f}%" in res.stdout


def test_from_arrays_refuses_class_names_that_repeat():
    """["a", "a", "b"], or [0, 1, "1"] (names are text): a run trained, and eval of another
    domain by name sent the repeated name to its last index, so its score (50%) was not its
    predictions' (79 of 80 right)."""
    x, y = np.zeros((4, 2)), np.array([0, 1, 2, 0])
    for classes, repeated in ((["a", "a", "b"], "'a'"), ([0, 1, "1"], "'1'")):
        with pytest.raises(DataError, match=rf"^class names repeat in .*: {repeated} \(names are compared as text"):
            Domain.from_arrays("d", x, y, classes=classes)
    assert Domain.from_arrays("d", x, y, classes=["a", "b", "c"]).classes == ["a", "b", "c"]


@pytest.mark.parametrize(("method", "mode"), [("source_only", "deep"), ("coral", "shallow")])
def test_a_source_whose_samples_are_all_of_one_class_is_one_line(tmp_path, method, mode):
    """Trained before (the 1-NN and the network predicted that class everywhere, scored as the
    target's share of it), where a dataset that names one class, and the linear classifier, refuse."""
    name = "one-class-source"
    if name not in list_datasets():
        x = torch.randn(12, 4, generator=torch.Generator().manual_seed(3))
        labels = {"os": [1] * 12, "ot": [0, 1] * 6}
        register_dataset(
            DatasetInfo(name=name, description="a source of class b only", domains=("os", "ot"), kind="features",
                        num_classes=2, needs="embedded"),
            lambda req: Domain.from_arrays(req.domain, x, labels[req.domain], classes=["a", "b"], dataset_name=name))
    deep = {"steps": 3, "batch_size": 4} if mode == "deep" else {}
    cfg = RunConfig(method=method, mode=mode, dataset=name, src="os", tgt="ot", **deep)
    with pytest.raises(DataError, match=r"^the source domain 'os' holds samples of one class only \(b, of 2\): a "
                                        r"classifier needs samples of at least 2$"):
        run(cfg, tmp_path / "r", progress_bar=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("labels", "said"), [
    ([0, 1] * 5 + [-1, 1], r"is unlabelled \(-1\): the source must be labelled"),  # np.bincount's ValueError had ended it
    ([0, 1] * 5 + [0.5, 1], r"is labelled 0\.5: labels are class indices"),  # .long() had made it class 0
], ids=["unlabelled", "fraction"])
def test_a_method_that_reads_the_source_labels_before_training_gets_them_checked(tmp_path, labels, said):
    """KMM reads every source label in prepare (its class proportions), before a batch is
    drawn: a dataset of one's own that lists no labels is checked there as training checks it."""
    name = _given_dataset(f"given-kmm-{labels[-2]!r}", labels)
    cfg = RunConfig(method="kmm", mode="deep", dataset=name, src="gs", tgt="gt", steps=3, batch_size=4)
    with pytest.raises(DataError, match=rf"^a sample of domain 'gs' \({re.escape(name)}\) {said}"):
        run(cfg, tmp_path / "r", progress_bar=False)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_the_source_labels_a_method_reads_are_those_of_its_dataset(tmp_path):
    """A dataset of one's own read whole (no label list): KMM's class proportions are the
    source's, from the labels as training reads them."""
    name = _given_dataset("given-kmm-proportions", [np.int64(1), 0.0, torch.tensor([1])] * 4)
    cfg = RunConfig(method="kmm", mode="deep", dataset=name, src="gs", tgt="gt", steps=3, batch_size=4)
    result = run(cfg, tmp_path / "r", progress_bar=False)
    assert result.diagnostics["class_proportions"] == [round(1 / 3, 4), round(2 / 3, 4)]


@pytest.mark.parametrize("workers", [0, 2])
def test_labels_of_mixed_kinds_led_by_a_numpy_integer_train_and_score(workers):
    """torch's collate takes a batch's kind from its first label: a numpy integer first, a
    float or a one-element tensor after it, had failed the scoring (and the loader workers'
    batches) with torch.stack's TypeError, a traceback."""
    labels = [np.int64(1), 0.0, torch.tensor([1]), torch.tensor(0)] * 3
    name = _given_dataset("given-numpy-first", labels)
    cfg = RunConfig(method="source_only", mode="deep", dataset=name, src="gs", tgt="gt", steps=3, batch_size=4,
                    workers=workers)
    result = run(cfg, None, progress_bar=False)
    pred = result.model(torch.randn(12, 4, generator=torch.Generator().manual_seed(3)))[1].argmax(1)
    assert result.target_accuracy == pytest.approx(100.0 * float((pred == torch.tensor([1, 0, 1, 0] * 3)).float().mean()))
