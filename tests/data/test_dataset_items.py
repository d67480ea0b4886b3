"""The items a dataset of one's own gives (``(x, y)`` pairs, its inputs and labels of every kind
real code makes): equivalent data trains the same network with or without loader workers, and
wrong data is one DataError line, never a traceback and never a silent wrong score."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from dalib.data import DatasetInfo, Domain, list_datasets, register_dataset
from dalib.data.domain import label_tensor
from dalib.errors import DalibError, DataError
from dalib.runner import RunConfig, run

N = 24


class _Items(torch.utils.data.Dataset):
    """24 samples of 4 features in 2 classes; ``change(i, x, y)`` gives item i as the test wants it."""

    def __init__(self, seed: int, change=None, targets: bool = False) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.y = [i % 2 for i in range(N)]
        self.x = torch.randn(N, 4, generator=gen) + 2.0 * torch.tensor(self.y)[:, None]
        self.change = change
        if targets:
            self.targets = list(self.y)  # the labels the items give (but where change alters one)

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int):
        x, y = self.x[i], self.y[i]
        return (x, y) if self.change is None else self.change(i, x, y)


def _dataset(name: str, source=None, target=None, targets: bool = False) -> str:
    """A dataset of one's own, domains s and t, whose items ``source`` and ``target`` change."""
    if name not in list_datasets():
        changes = {"s": source, "t": target}
        register_dataset(
            DatasetInfo(name=name, description="items of one's own (tests)", domains=("s", "t"), kind="features",
                        num_classes=2, needs="embedded"),
            lambda req: Domain(req.domain, _Items(0 if req.domain == "s" else 1, changes[req.domain], targets),
                               num_classes=2, input_shape=(4,), classes=["a", "b"], dataset_name=name))
    return name


def _run(name: str, method: str = "source_only", workers: int = 0, **kw):
    cfg = RunConfig(method=method, mode="deep", dataset=name, src="s", tgt="t", steps=3, batch_size=8, device="cpu",
                    workers=workers, **kw)
    return run(cfg, None, progress_bar=False)


def _weights(result) -> list[torch.Tensor]:
    return [p.detach().clone() for p in result.model.parameters()]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_target_label_out_of_range_is_refused_not_scored_as_a_mistake(workers):
    """source_only draws no target batch: the scoring alone reads the target's labels, and had
    counted a 7 of 2 classes as a wrong prediction (and eval --predictions failed on it)."""
    name = _dataset("items-target-7", target=lambda i, x, y: (x, 7 if i == 5 else y))
    with pytest.raises(DataError, match=r"^a sample of domain 't' \(items-target-7\) is labelled 7: labels must lie in "
                                        r"0\.\.1, or be -1 for an unlabelled sample"):
        _run(name, workers=workers)


@pytest.mark.parametrize("workers", [0, 2])
def test_item_labels_are_checked_where_the_dataset_lists_targets_too(workers):
    """Its targets (0/1) said nothing wrong; item 5 gives 7: it reached cross_entropy, a traceback."""
    name = _dataset("items-targets-disagree", source=lambda i, x, y: (x, 7 if i == 5 else y), targets=True)
    with pytest.raises(DataError, match=r"^a sample of domain 's' \(items-targets-disagree\) is labelled 7"):
        _run(name, workers=workers)


def test_a_targets_list_that_agrees_with_the_items_trains_the_same_network():
    """KMM reads the source labels in prepare: through a DataLoader where the dataset lists no
    targets, whose seed was drawn from the global generator, which moved every later dropout mask."""
    plain, listed = _dataset("items-plain"), _dataset("items-listed", targets=True)
    for method in ("kmm", "source_only"):
        a, b = _run(plain, method, method_config={}), _run(listed, method, method_config={})
        assert all(torch.equal(p, q) for p, q in zip(_weights(a), _weights(b), strict=True)), method


def test_a_label_error_in_the_scoring_says_which_sample_with_loader_workers_too():
    name = _dataset("items-text-target", target=lambda i, x, y: (x, str(y)))
    for workers in (0, 2):  # with workers, only the words after the first ": " had been kept
        with pytest.raises(DataError, match=r"^a sample of domain 't' \(items-text-target\) is labelled '0' \(str\): "
                                            r"labels are class indices"):
            _run(name, workers=workers)


def test_inputs_as_arrays_lists_or_tensors_that_require_grad_train_as_tensors():
    plain = _dataset("items-plain")
    kinds = {"items-numpy": lambda i, x, y: (x.numpy().astype(np.float64), np.int64(y)),
             "items-list": lambda i, x, y: (x.tolist(), y),
             "items-grad": lambda i, x, y: (x.clone().requires_grad_(), y),
             # a flip done in numpy (an augmentation) gives negative strides, which torch.as_tensor refuses
             "items-flipped": lambda i, x, y: (np.ascontiguousarray(x.numpy()[::-1])[::-1], torch.tensor(y))}
    for workers in (0, 2):
        want = _weights(_run(plain, workers=workers))
        for kind, change in kinds.items():
            got = _weights(_run(_dataset(kind, change, change), workers=workers))
            assert all(torch.allclose(p, q) for p, q in zip(want, got, strict=True)), (kind, workers)


@pytest.mark.parametrize(("change", "said"), [
    (lambda i, x, y: (x, y, {"path": f"{i}.png"}), r"is a tuple of 3: a dataset's items are \(x, y\) pairs"),
    (lambda i, x, y: {"x": x, "y": y}, r"is a dict: a dataset's items are \(x, y\) pairs"),  # its keys had been read
    (lambda i, x, y: (Image.new("L", (2, 2)), y), r"has an input of type Image: inputs are tensors or arrays"),
], ids=["triple", "dict", "pil"])
@pytest.mark.parametrize("method", ["source_only", "kmm"])
def test_items_that_are_no_input_label_pair_are_one_line(change, said, method):
    name = _dataset(f"items-{said[:12]}", change, change)
    for workers in (0, 2):
        with pytest.raises(DataError, match=rf"^a sample of (domain 's' \({name}\)|the source) {said}"):
            _run(name, method, workers=workers)


def test_inputs_of_different_shapes_in_one_batch_are_one_line():
    name = _dataset("items-ragged", source=lambda i, x, y: (x[:3] if i == 5 else x, y))
    for workers in (0, 2):
        with pytest.raises(DataError, match=r"^the samples of domain 's' \(items-ragged\) have inputs of different shapes, "
                                            r"\(4,\) and \(3,\)"):
            _run(name, workers=workers)


def test_kmm_on_inputs_of_one_number_each_is_one_line():
    """(N,) inputs: KMM's input features had failed on flatten(1), an IndexError."""
    name = _dataset("items-scalar", lambda i, x, y: (x[0], y), lambda i, x, y: (x[0], y))
    with pytest.raises(DalibError, match=r"^the model takes inputs of shape \(B, 4\)"):
        _run(name, "kmm")


@pytest.mark.parametrize(("label", "said"), [(2**70, str(2**70)), (np.uint64(2**64 - 1), str(2**64 - 1)),
                                           (float("inf"), "inf"), (1e20, "1e+20")])
def test_a_label_beyond_any_class_index_is_named_as_it_is(label, said):
    """torch.tensor's overflow (a ValueError) and .long()'s (inf read as -9223372036854775808)."""
    domain = Domain("d", _Items(0), num_classes=2, input_shape=(4,), classes=["a", "b"], dataset_name="mine")
    with pytest.raises(DataError, match=rf"^a sample of domain 'd' \(mine\) is labelled {re.escape(said)}: labels are "
                                        "class indices"):
        label_tensor([0, label], domain)


def test_labels_that_are_tensors_or_numpy_values_leave_a_loader_worker_as_numbers():
    """Each tensor a worker sends is a shared-memory file of its own: one per label made loading
    with workers 15 times slower, and a batch of 512 ran out of file descriptors (ulimit -n 1024)."""
    from dalib.data.domain import collate_items

    x, ys = collate_items([(torch.zeros(2), torch.tensor(1)), (np.zeros(2), np.int64(0)), (torch.ones(2), 1.0),
                           (torch.ones(2), torch.tensor([1]))])
    assert x.shape == (4, 2) and ys == [1, 0, 1.0, 1]
    assert [type(y) for y in ys] == [int, int, float, int]


def test_loader_workers_killed_on_a_stop_leave_no_folder_in_the_temporary_folder(tmp_path):
    """A stop kills the loader's workers (they ignore Ctrl-C and SIGTERM). Each had made a
    pymp-* folder of its own in the temporary folder (the socket through which it passes its
    batches' tensors), which no one removed: one per worker for every stopped run."""
    import os
    import subprocess
    import sys

    script = """
import torch, dalib
from dalib import runner
from dalib.data import DatasetInfo, Domain, register_dataset

class Lazy(torch.utils.data.Dataset):
    def __len__(self): return 32
    def __getitem__(self, i): return torch.full((4,), float(i % 2)), i % 2

register_dataset(DatasetInfo(name="lazy", description="", domains=("s", "t"), num_classes=2, needs="embedded"),
                 lambda r: Domain(r.domain, Lazy(), 2, (4,), ["a", "b"]))
original, asked = runner._Prefetcher.__next__, [0]

def next_batch(self):
    asked[0] += 1
    if asked[0] == 4:  # Ctrl-C while the run waits for a batch
        raise KeyboardInterrupt
    return original(self)

runner._Prefetcher.__next__ = next_batch
try:
    dalib.run(dalib.RunConfig(method="source_only", mode="deep", dataset="lazy", src="s", tgt="t", steps=6,
                              batch_size=4, workers=2, device="cpu"), None, progress_bar=False)
except KeyboardInterrupt:
    print("stopped")
"""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "TMPDIR": str(tmp)}, capture_output=True,
                          text=True, timeout=300)
    assert done.stdout.strip() == "stopped", done.stderr
    assert not list(tmp.glob("pymp-*"))
