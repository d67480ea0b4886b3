"""The runner: determinism, resume after an interrupted run, outputs, data checks."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
import warnings

import numpy as np
import pytest
import torch

import dalib
from dalib.data import Domain, DatasetInfo, list_datasets, load_domain, register_dataset
from dalib.errors import CheckpointError, ConfigError, DataError
from dalib.registry import unregister_method
from dalib.runner import RunConfig, cpu_model, load_checkpoint, run
from tests._support.interrupt import Killed as _Killed
from tests._support.interrupt import killed_at as _killed_at


def _config(**kw):
    base = dict(method="dann", src="mnist", tgt="usps", steps=30, batch_size=16, log_every=5,
                checkpoint_every=10, method_config={"hidden": 64})
    base.update(kw)
    return RunConfig(**base)


def _resume(config, out):
    """``run(config, out, resume=True)`` and the steps it trained: a restart from step 0 ends
    as the uninterrupted run too (training is deterministic), so only these tell a resume."""
    trained = []
    result = run(config, out, resume=True, progress_bar=False, on_step=lambda done, logs: trained.append(done))
    return result, trained


def test_same_seed_same_numbers_on_cpu(tmp_path):
    a = run(_config(), tmp_path / "a", progress_bar=False)
    b = run(_config(), tmp_path / "b", progress_bar=False)
    assert (a.source_accuracy, a.target_accuracy) == (b.source_accuracy, b.target_accuracy)
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()
    c = run(_config(seed=1), tmp_path / "c", progress_bar=False)
    assert (tmp_path / "c" / "metrics.jsonl").read_text() != (tmp_path / "a" / "metrics.jsonl").read_text()
    # each logged step carries the learning rate and DANN's λ_p of its last update (Ganin et al.'s
    # schedules at p = (step - 1) / steps): lr0·(1 + 10p)^-0.75 and 2 / (1 + e^(-10p)) - 1
    logged = [h for h in a.history if "lr" in h]
    assert [h["step"] for h in logged] == [5, 10, 15, 20, 25, 30]
    for h in logged:
        p = (h["step"] - 1) / 30
        assert h["lr"] == pytest.approx(0.01 * (1 + 10 * p) ** -0.75, rel=1e-9)
        assert h["loss/grl"] == pytest.approx(2 / (1 + math.exp(-10 * p)) - 1, rel=1e-6)


def _claiming_process(lock):
    """A process that has claimed ``lock`` (:func:`dalib.runner.claim_file`) and holds it for a minute."""
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from dalib.runner import claim_file; "
         "claim_file(Path(sys.argv[1]), 'busy', 'advice'); print('claimed', flush=True); time.sleep(60)", str(lock)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "claimed"
    return holder


def test_resume_after_interruption_gives_the_uninterrupted_result(tmp_path):
    full = run(_config(), tmp_path / "full", progress_bar=False)
    _killed_at(_config(), tmp_path / "cut", 25)  # after the checkpoint at step 20: steps 21..25 are redone
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 20
    assert not (tmp_path / "cut" / "result.json").exists()
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 25  # written past the checkpoint, trimmed on resume

    # the time before the checkpoint counts in the run's seconds (made long here, to tell)
    ckpt = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    torch.save(ckpt | {"seconds": 1000.0}, tmp_path / "cut" / "checkpoint.pt")
    resumed, trained = _resume(_config(), tmp_path / "cut")
    assert trained == list(range(21, 31))  # from the checkpoint on
    assert 1000.0 < resumed.seconds < 1000.0 + full.seconds * 5
    assert (resumed.source_accuracy, resumed.target_accuracy) == (full.source_accuracy, full.target_accuracy)
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()
    assert resumed.history == full.history  # the lines before the checkpoint included
    w_full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    w_cut = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    for key, value in w_full["model"].items():
        assert torch.equal(value, w_cut["model"][key]), key
    for key, value in w_full["method"].items():
        assert torch.equal(value, w_cut["method"][key]), key
    r_full = json.loads((tmp_path / "full" / "result.json").read_text())
    r_cut = json.loads((tmp_path / "cut" / "result.json").read_text())
    assert r_full["target_accuracy"] == r_cut["target_accuracy"]


def test_a_resume_on_other_dalib_code_or_another_device_warns_and_records_the_step(tmp_path):
    """As for the method's code and the thread count: a checkpoint of another version of dalib's
    own code, or one written on a GPU (bfloat16 autocast), goes on with other numbers."""
    from dalib.registry import dalib_code_hash

    cfg = _config(steps=20)
    _killed_at(cfg, tmp_path / "cut", 15)
    path = tmp_path / "cut" / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    assert (ckpt["dalib_code"], ckpt["device"]) == (dalib_code_hash(), "cpu")
    torch.save(ckpt | {"dalib_code": "an-older-dalib", "device": "cuda with bfloat16 autocast"}, path)
    with pytest.warns(RuntimeWarning) as said:
        run(cfg, tmp_path / "cut", resume=True, progress_bar=False)
    messages = [str(w.message) for w in said]
    assert any(m.startswith("dalib's own code (its runner, models, losses or data) changed since the checkpoint of "
                            "step 10") for m in messages), messages
    assert any(m.startswith("the checkpoint of step 10 was written on cuda with bfloat16 autocast, this resume runs "
                            "on cpu") for m in messages), messages
    result = json.loads((tmp_path / "cut" / "result.json").read_text())
    assert (result["dalib_code_changed_at"], result["device_changed_at"]) == ([10], [10])
    final = load_checkpoint(path)
    assert (final["dalib_code_changed_at"], final["device_changed_at"]) == ([10], [10])
    assert (final["dalib_code"], final["device"]) == (dalib_code_hash(), "cpu")
    # an uninterrupted run, and a resume on the same code and device: nothing to record
    _killed_at(cfg, tmp_path / "same", 15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(cfg, tmp_path / "same", resume=True, progress_bar=False)
    same = json.loads((tmp_path / "same" / "result.json").read_text())
    assert not {"dalib_code_changed_at", "device_changed_at"} & set(same)


def test_the_thread_count_is_recorded_and_a_resume_with_another_warns(tmp_path, data_root):
    """On the CPU the float sums, so the numbers, depend on torch's thread count: result.json and
    the checkpoint record it, and a resume with another count says it will not match the
    uninterrupted run and records the step."""
    threads = torch.get_num_threads()
    cfg = _config(steps=20)
    _killed_at(cfg, tmp_path / "cut", 15)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["threads"] == threads
    other = 2 if threads == 1 else 1
    torch.set_num_threads(other)
    try:
        with pytest.warns(RuntimeWarning, match=rf"written with {threads} torch threads, this resume has {other}"):
            run(cfg, tmp_path / "cut", resume=True, progress_bar=False)
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "cut" / "result.json").read_text())
    assert (result["threads"], result["threads_changed_at"]) == (other, [10])
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["threads_changed_at"] == [10]
    run(cfg, tmp_path / "whole", progress_bar=False)
    whole = json.loads((tmp_path / "whole" / "result.json").read_text())
    assert whole["threads"] == threads and "threads_changed_at" not in whole
    shallow = run(RunConfig(method="coral", dataset="office-caltech-surf", src="amazon", tgt="webcam", classifier="1nn",
                            data_root=str(data_root)), tmp_path / "shallow", progress_bar=False)
    assert json.loads((tmp_path / "shallow" / "result.json").read_text())["threads"] == threads


class _HostRandom(dalib.Method):
    """Scales the source loss by draws from Python's and numpy's global generators, as a
    plugin's mixup or augmentation might, and logs them."""

    uses_target = False

    @dataclasses.dataclass(frozen=True)
    class Config:
        pass

    def loss(self, batch, out, progress):
        py, npy = random.random(), float(np.random.uniform())
        cls = self.source_loss(batch, out) * (0.5 + py) * (0.5 + npy)
        return {"total": cls, "py": py, "np": npy}


class _HostRandomPCG(_HostRandom):
    """Sets numpy's global bit generator to PCG64 before training (prepare is not run again on
    a resume: the checkpoint's state says which generator)."""

    def prepare(self, context):
        np.random.set_bit_generator(np.random.PCG64(7))


@pytest.mark.parametrize("method", [_HostRandom, _HostRandomPCG])
def test_a_resume_goes_on_with_pythons_and_numpys_random_streams(tmp_path, method):
    """The checkpoint keeps Python's and numpy's global random states beside torch's: a plugin
    that draws from them resumes as the uninterrupted run went on (they were seeded anew), with
    numpy's generator of the run's kind; the caller gets its own generator back."""
    callers = np.random.get_bit_generator()
    dalib.register_method("host_random_test")(method)
    try:
        cfg = _config(method="host_random_test", method_config={}, log_every=1)
        full = run(cfg, tmp_path / "full", progress_bar=False)
        _killed_at(cfg, tmp_path / "cut", 25)
        resumed, trained = _resume(cfg, tmp_path / "cut")
    finally:
        unregister_method("host_random_test")
    assert trained == list(range(21, 31))
    draws = [(h["loss/py"], h["loss/np"]) for h in full.history if "loss/py" in h]
    assert len(set(draws)) == 30  # a draw at every step, each its own
    assert resumed.history == full.history
    assert (resumed.source_accuracy, resumed.target_accuracy) == (full.source_accuracy, full.target_accuracy)
    assert np.random.get_bit_generator() is callers


def test_a_run_draws_the_same_numpy_numbers_whatever_generator_the_caller_set(tmp_path):
    """np.random.seed re-seeds the global generator the caller installed: with the caller's PCG64,
    a plugin that draws from numpy drew other numbers than the same run in a fresh process (or at
    the CLI). The run now seeds the MT19937 a fresh process has, and gives the caller's back."""
    dalib.register_method("host_random_test")(_HostRandom)
    try:
        cfg = _config(method="host_random_test", method_config={}, steps=5, log_every=1)
        plain = run(cfg, None, progress_bar=False)
        callers = np.random.PCG64(1)
        np.random.set_bit_generator(callers)
        try:
            under_pcg = run(cfg, None, progress_bar=False)
            assert np.random.get_bit_generator() is callers
        finally:
            np.random.set_bit_generator(np.random.MT19937())
    finally:
        unregister_method("host_random_test")
    assert [h["loss/np"] for h in under_pcg.history if "loss/np" in h] == [h["loss/np"] for h in plain.history if "loss/np" in h]
    assert under_pcg.history == plain.history


def test_a_run_from_pretrained_weights_resumes_without_the_weights_file(tmp_path):
    """The checkpoint holds every weight: a resume reads neither --pretrained's file (moved or
    deleted since) nor ImageNet's (no network), and ends as the uninterrupted run does, the
    pre-trained backbone's lower learning rate included."""
    import torchvision
    from PIL import Image

    for domain in ("a", "b"):
        for cls, color in (("cat", (250, 10, 10)), ("dog", (10, 10, 250))):
            for i in range(3):
                path = tmp_path / "imgs" / domain / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (12, 12), tuple(c + 2 * i for c in color)).save(path)
    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    config = RunConfig(method="source_only", data=str(tmp_path / "imgs"), src="a", tgt="b", arch="resnet18",
                       image_size=32, pretrained=str(weights), steps=4, batch_size=2, log_every=1, checkpoint_every=2)
    full = run(config, tmp_path / "full", progress_bar=False)
    _killed_at(config, tmp_path / "cut", 3)
    weights.unlink()
    resumed = run(config, tmp_path / "cut", resume=True, progress_bar=False)
    assert resumed.history == full.history
    assert (resumed.source_accuracy, resumed.target_accuracy) == (full.source_accuracy, full.target_accuracy)
    assert resumed.model.pretrained  # a pre-trained backbone still, for the methods that ask (its learning rate)


def test_checkpoints_are_atomic_and_loadable_weights_only(tmp_path):
    run(_config(steps=12, checkpoint_every=5), tmp_path / "r", progress_bar=False)
    names = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert names == ["checkpoint.pt", "metrics.jsonl", "result.json"]  # no temporary files left
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 12 and "discriminator.0.weight" in ckpt["method"]


def test_a_reader_of_the_file_before_a_write_reads_it_whole(tmp_path):
    """The new file is renamed over the old one, never written into it: a reader that opened the
    old checkpoint or result.json (eval, a monitoring script) reads it whole, as it was."""
    from dalib.runner import atomic_write_text

    path = tmp_path / "result.json"
    atomic_write_text(path, "old " * 1000)
    with open(path) as reader:
        atomic_write_text(path, "new")
        assert reader.read() == "old " * 1000
    assert path.read_text() == "new"


def test_a_file_name_near_the_limit_is_written_atomically_too(tmp_path):
    from dalib.runner import atomic_write_text, tidy_temporaries

    # a name the file system takes (255 bytes; "é" is two) has a temporary name it takes too:
    # `eval --predictions` with such a name had been refused after its work, by the temporary name
    for name in ("p" * 251 + ".csv", "é" * 125 + ".csv"):
        atomic_write_text(tmp_path / name, "a,b\n")
        assert (tmp_path / name).read_text() == "a,b\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["p" * 251 + ".csv", "é" * 125 + ".csv"])
    # a killed writer's temporary file of such a name is still found and tidied
    import subprocess
    import sys

    from dalib.runner import _temporary_name

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    stale = tmp_path / _temporary_name("q" * 251).replace(f"tmp{os.getpid()}", f"tmp{dead}")
    stale.write_text("half")
    tidy_temporaries(tmp_path)
    assert not stale.exists()


def test_a_metrics_line_the_disk_refuses_names_the_file(tmp_path, monkeypatch):
    # a full disk (metrics.jsonl opened on /dev/full): the write's own error carries no file
    # name, and the buffered file raised it again on closing, over any other ("dalib: error: No
    # space left on device"); opened by its descriptor (never through a link), it was named by
    # the descriptor's number
    import os
    import re

    from dalib.errors import DataError

    os_open = os.open

    def full_metrics(path, *args, **kwargs):
        return os_open("/dev/full" if str(path).endswith("metrics.jsonl") else path, *args, **kwargs)

    monkeypatch.setattr(os, "open", full_metrics)
    metrics = re.escape(str(tmp_path / "r" / "metrics.jsonl"))
    with pytest.raises(DataError, match=rf"^cannot write {metrics} \(No space left on device\)$"):
        run(_config(steps=6, log_every=2, checkpoint_every=0), tmp_path / "r", progress_bar=False)


def test_eval_every_logs_accuracies(tmp_path):
    res = run(_config(steps=10, eval_every=4, log_every=0), tmp_path / "r", progress_bar=False)
    evals = [h for h in res.history if "target_acc" in h]
    # every 4 steps, and the last step (the curve ends at the run's own result)
    assert [h["step"] for h in evals] == [4, 8, 10]
    assert all(0 <= h["target_acc"] <= 100 for h in evals)
    assert (evals[-1]["source_acc"], evals[-1]["target_acc"]) == (res.source_accuracy, res.target_accuracy)
    lines = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert lines == res.history


def test_the_accuracies_logged_mid_run_score_the_network_of_that_step_on_each_domain(toy_dataset, tmp_path):
    """The lines of --eval-every between the first and the last step: each score is of its own
    domain (the last line is the final scoring's, so a mid-run score of the wrong domain had
    passed every test)."""
    from dalib.runner import evaluate, load_model

    cfg = RunConfig(method="source_only", dataset=toy_dataset, src="src", tgt="tgt", mode="deep", steps=20,
                    batch_size=16, eval_every=10, checkpoint_every=10, log_every=0, holdout=0.2)
    _killed_at(cfg, tmp_path / "r", 15)  # its checkpoint is the network of step 10
    line = next(json.loads(t) for t in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
                if json.loads(t)["step"] == 10)
    model, cpu = load_model(tmp_path / "r"), torch.device("cpu")
    kept, held = load_domain(toy_dataset, "src").split(0.2, seed=0)
    scores = {"source_acc": evaluate(model, kept, cpu), "target_acc": evaluate(model, load_domain(toy_dataset, "tgt"), cpu),
              "holdout_acc": evaluate(model, held, cpu)}
    assert {k: line[k] for k in scores} == scores
    assert len(set(scores.values())) == 3  # (the three differ, so a swap shows)


def test_result_json_says_what_made_its_numbers(toy_dataset, tmp_path, monkeypatch):
    """What a reader needs to reproduce a run from its result.json alone: dalib's version string
    is the same from commit to commit, so the code's hashes (of the code that ran: an edit of
    dalib's files during the run is not it); the backbone a default chose; the number of samples
    each domain held (another copy of the data has other counts)."""
    from dalib import registry

    real = registry.dalib_code_hash()
    assert len(real) == len(registry.method_code_hash(dalib.get_method("coral"))) == 16
    for mode in ("deep", "shallow"):
        calls = []

        def hashed():  # dalib's files as the run begins, then edited
            calls.append(1)
            return "at-its-start" if len(calls) == 1 else "edited-since"

        monkeypatch.setattr(registry, "dalib_code_hash", hashed)
        deep = {"steps": 3, "batch_size": 16, "holdout": 0.25} if mode == "deep" else {}  # (a shallow run holds none out)
        run(RunConfig(method="coral", dataset=toy_dataset, src="src", tgt="tgt", mode=mode, **deep), tmp_path / mode,
            progress_bar=False)
        assert registry.dalib_code_hash() == "edited-since"
        result = json.loads((tmp_path / mode / "result.json").read_text())
        assert result["code"] == {"dalib": "at-its-start", "method": registry.method_code_hash(dalib.get_method("coral"))}
        if mode == "deep":
            assert load_checkpoint(tmp_path / mode / "checkpoint.pt")["dalib_code"] == "at-its-start"
        source, target = (load_domain(toy_dataset, d) for d in ("src", "tgt"))
        held = result.get("selection", {}).get("n_holdout", 0)
        assert result["samples"] == {"source": len(source) - held, "target": len(target)}
        assert held == (0 if mode == "shallow" else pytest.approx(len(source) / 4, abs=2))
        hardware = result["hardware"]
        assert hardware["cpu"] == cpu_model() and ("gpu" in hardware) == result["device"].startswith("cuda")
    assert result["run_config"]["arch"] is None and "arch" not in result  # (shallow: no network)
    deep = json.loads((tmp_path / "deep" / "result.json").read_text())
    assert deep["run_config"]["arch"] is None and deep["arch"] == "mlp"  # the default for features, as built


def test_a_bundled_methods_warning_names_the_callers_line(toy_dataset):
    """A warning from a method's adapt (dalib_plugins, called by the runner) named the plugin's
    own file, not the user's dalib.run line."""
    config = RunConfig(method="ot", dataset=toy_dataset, src="src", tgt="tgt", mode="shallow",
                       method_config={"max_iter": 2, "reg": 0.01, "backend": "blocked"})
    with pytest.warns(RuntimeWarning, match="Sinkhorn stopped after max_iter=2") as caught:
        run(config, None, progress_bar=False)
    assert [w.filename for w in caught if "max_iter=2" in str(w.message)] == [__file__]
    # and from a method's prepare (finetune's, called by the runner: it had named dalib/runner.py)
    with pytest.warns(RuntimeWarning, match="finetune has no starting point") as caught:
        run(RunConfig(method="finetune", dataset=toy_dataset, src="src", tgt="tgt", mode="deep", steps=1,
                      batch_size=16), None, progress_bar=False)
    assert [w.filename for w in caught] == [__file__]
    # a subclass registered under its own name is named so (it had been "finetune")
    from dalib.registry import get_method, register_method, unregister_method

    register_method("finetune_renamed")(type("Renamed", (get_method("finetune"),), {"__doc__": "Renamed."}))
    try:
        with pytest.warns(RuntimeWarning, match="^finetune_renamed has no starting point"):
            run(RunConfig(method="finetune_renamed", dataset=toy_dataset, src="src", tgt="tgt", mode="deep", steps=1,
                          batch_size=16), None, progress_bar=False)
    finally:
        unregister_method("finetune_renamed")


def test_a_warning_skips_dalibs_its_methods_and_torchs_frames_only(toy_dataset, tmp_path):
    """A warning is attributed to the first frame outside dalib, its bundled methods, torch (which
    calls a method's forward) and click (which calls dalib's commands); a user's module whose name
    merely begins so is the user's."""
    import functools

    from dalib.errors import warn_outside_dalib

    def frame_of(module: str):  # a function whose frame belongs to ``module``, calling ``inner``
        scope = {"__name__": module, "warn": warn_outside_dalib}
        exec(compile("def call(inner=None):\n    inner() if inner else warn('said', UserWarning)\n",
                     f"<{module}>", "exec"), scope)
        return scope["call"]

    def warned(*modules: str) -> str:
        call = frame_of("dalib.kernels.gaussian")  # where the warning is raised
        for module in modules:  # each calls the one before; the last is called from here
            call = functools.partial(frame_of(module), call)  # (a partial adds no frame)
        with pytest.warns(UserWarning) as caught:
            call()
        return caught[0].filename

    assert warned("dalib.runner", "torch.nn.modules.module", "dalib_plugins.ot") == __file__
    assert warned("dalib.runner", "dalib.cli", "click.core", "click.testing") == __file__  # (the CLI invoked from here)
    assert warned("dalib.runner", "torch_helpers", "dalib") == "<torch_helpers>"  # (the user's module)
    assert warned("dalib.runner", "dalib_extras", "torch") == "<dalib_extras>"
    from click.testing import CliRunner

    from dalib.cli import cli

    with pytest.warns(UserWarning, match="steps is for deep training") as caught:  # it had named click's core.py
        CliRunner().invoke(cli, ["run", "coral", "--dataset", toy_dataset, "--src", "src", "--tgt", "tgt", "--steps",
                                 "5", "--quiet", "--out", str(tmp_path / "cli")])
    assert [w.filename for w in caught] == [__file__]


@pytest.mark.parametrize("stderr", [None, "closed"])
def test_a_run_without_a_stderr_shows_no_progress_and_finishes(toy_dataset, monkeypatch, stderr):
    """Under pythonw, a service or `2>&-`, sys.stderr is None: tqdm's bar, which the default and
    progress_bar=True draw there, failed with an AttributeError (a closed one with ValueError)."""
    import io
    import sys

    if stderr == "closed":
        stderr = io.StringIO()
        stderr.close()
    monkeypatch.setattr(sys, "stderr", stderr)
    for bar in (None, True):
        assert run(_config(dataset=toy_dataset, src="src", tgt="tgt", steps=3), None, progress_bar=bar).steps == 3


def test_hardware_names_the_gpu_and_its_autocast(monkeypatch):
    """On CUDA, result.json says which GPU computed the numbers, with which CUDA, and whether the
    forward pass ran under bfloat16 autocast: each rounds otherwise. (No GPU here: torch's answers
    are stood in for.)"""
    import builtins
    import platform

    from dalib.runner import hardware
    from dalib_benchmarks._machine import machine_info

    names = set()
    if os.path.exists("/proc/cpuinfo"):  # (Linux on x86; ARM's has no model name, and other systems no /proc)
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            names = {line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")}
    assert cpu_model() in (names or {platform.processor() or platform.machine()})
    assert machine_info()["cpu"] == cpu_model()  # (the benchmarks' machine line names it the same way)
    real_open = builtins.open

    def no_proc(path, *args, **kwargs):
        if str(path) == "/proc/cpuinfo":
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_open(path, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", no_proc)
        assert cpu_model() == (platform.processor() or platform.machine())
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: asked.append(d) or f"GPU {d.index}")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert hardware(torch.device("cuda", 1), True) == {"cpu": cpu_model(), "gpu": "GPU 1", "cuda": "12.8",
                                                       "autocast": "bfloat16"}
    assert hardware(torch.device("cuda", 0))["autocast"] is None  # amp off, or a shallow run's float64
    assert hardware(torch.device("cpu"), True) == {"cpu": cpu_model()} and len(asked) == 2

    def gone(d):
        raise RuntimeError("CUDA error: no device")

    monkeypatch.setattr(torch.cuda, "get_device_name", gone)  # a record, never a reason for a run to fail
    assert hardware(torch.device("cuda", 0), True) == {"cpu": cpu_model(), "cuda": "12.8", "autocast": "bfloat16"}


def test_domains_of_different_sizes_and_infinite_streams(toy_dataset):
    # 300 source samples, batch 64: 20 steps cross several epochs without stopping
    res = run(_config(dataset=toy_dataset, src="src", tgt="tgt", steps=20, batch_size=64), None, progress_bar=False)
    assert res.steps == 20


def _mismatch_loader(req):
    d = 5 if req.domain == "a" else 7
    x = np.random.default_rng(0).normal(size=(40, d)).astype(np.float32)
    return Domain.from_arrays(req.domain, x, np.arange(40) % 2, num_classes=2)


def test_domains_with_different_feature_sizes_are_refused():
    if "test-mismatch" not in list_datasets():
        register_dataset(DatasetInfo(name="test-mismatch", description="tests", domains=("a", "b"),
                                     num_classes=2, needs="embedded"), _mismatch_loader)
    with pytest.raises(DataError, match="share a feature space"):
        run(_config(dataset="test-mismatch", src="a", tgt="b"), None, progress_bar=False)


def test_stream_visits_every_sample_once_per_epoch():
    from dalib.runner import _Stream

    s = _Stream(10, 4, seed=3)
    seen = torch.cat([s.indices(k) for k in range(5)])  # 20 draws = 2 epochs
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(_Stream(10, 4, seed=3).indices(3), s.indices(3))  # pure function of step
    # each epoch is shuffled again (not the first epoch's order repeated), and seeds differ
    long = _Stream(100, 10, seed=3)
    epochs = [torch.cat([long.indices(k) for k in range(e * 10, e * 10 + 10)]) for e in range(3)]
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    assert not torch.equal(epochs[0], torch.cat([_Stream(100, 10, seed=4).indices(k) for k in range(10)]))


def test_public_api_is_sorted_and_complete():
    assert dalib.__all__ == sorted(dalib.__all__)
    for name in dalib.__all__:
        assert hasattr(dalib, name)


def test_identity_backbone_feeds_the_inputs_to_the_bottleneck():
    from dalib.models import build_model

    model = build_model("identity", (2, 5), 3, bottleneck_dim=7)
    first = model.bottleneck[0]
    assert isinstance(first, torch.nn.Linear) and (first.in_features, first.out_features) == (10, 7)
    x = torch.randn(4, 2, 5)
    assert torch.equal(model.backbone(x), x.flatten(1))
    out = model(x)
    assert out.features.shape == (4, 7) and out.logits.shape == (4, 3)
    assert model.stages() == []  # nothing for partial:K fine-tuning to freeze


def test_channels_last_on_the_cpu_trains_the_same_network(tmp_path, monkeypatch):
    """The CPU runner keeps conv weights in channels_last for speed: the losses must be those of
    the plain layout up to the order of float sums, and a checkpoint written under one layout
    (as by dalib versions before it) must resume under the other."""
    from dalib import runner

    assert runner.CPU_MEMORY_FORMAT == torch.channels_last
    losses: dict[str, list[float]] = {"nchw": [], "channels_last": []}
    run(_config(steps=12), tmp_path / "cl", progress_bar=False,
        on_step=lambda step, logs: losses["channels_last"].append(float(logs["total"])))
    monkeypatch.setattr(runner, "CPU_MEMORY_FORMAT", torch.contiguous_format)

    def kill_at_8(step, logs):
        losses["nchw"].append(float(logs["total"]))
        if step == 8:
            raise _Killed

    with pytest.raises(_Killed):
        run(_config(steps=12, checkpoint_every=5), tmp_path / "nchw", progress_bar=False, on_step=kill_at_8)
    np.testing.assert_allclose(losses["nchw"][:8], losses["channels_last"][:8], rtol=2e-3)  # sums drift apart
    monkeypatch.setattr(runner, "CPU_MEMORY_FORMAT", torch.channels_last)
    resumed = run(_config(steps=12, checkpoint_every=5), tmp_path / "nchw", resume=True, progress_bar=False)
    full = json.loads((tmp_path / "cl" / "result.json").read_text())
    assert resumed.steps == 12
    assert abs(resumed.target_accuracy - full["target_accuracy"]) < 2.0


def test_a_backbone_with_5d_weights_trains_on_the_cpu(toy_dataset, monkeypatch):
    """channels_last has no 5-d form: a 3-d convolution (a user's backbone) keeps its layout."""
    from torch import nn

    from dalib.models import BACKBONES

    def conv3d(input_shape, pretrained):
        net = nn.Sequential(nn.Unflatten(1, (1, 2, 2, 2)), nn.Conv3d(1, 4, 1), nn.ReLU(), nn.Flatten())
        return net, 32

    monkeypatch.setitem(BACKBONES, "conv3d-test", conv3d)
    res = run(_config(dataset=toy_dataset, src="src", tgt="tgt", arch="conv3d-test", steps=5), None, progress_bar=False)
    assert res.steps == 5


def test_two_processes_under_torchrun_train_one_run(tmp_path):
    """Data parallelism on the CPU (gloo): two ranks, channels_last gradients averaged across
    them; rank 0 alone writes the run folder and prints the result."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    dalib_cli = Path(sys.executable).parent / "dalib"
    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    env["TMPDIR"] = str(tmp_path)  # (torchrun leaves its log folders there)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(dalib_cli), "run", "source_only",
         "--src", "mnist", "--tgt", "usps", "--steps", "6", "--batch-size", "16", "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("target accuracy:") == 1, proc.stdout
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 6
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.jsonl", "result.json"]
    # again into the finished run: every rank refuses in one line (the others had trained while rank 0 stopped)
    again = subprocess.run(proc.args, capture_output=True, text=True, env=env, timeout=240)
    assert again.returncode != 0 and again.stderr.count("already holds a run") == 2, again.stderr[-2000:]
    assert json.loads((out / "result.json").read_text()) == result
    # resumed by one process: another share of each step's batch per process (other numbers), refused
    alone = subprocess.run([str(dalib_cli), *proc.args[6:], "--resume"], capture_output=True, text=True, env=env,
                           timeout=240)
    assert alone.returncode == 2, alone.stderr[-2000:]
    assert alone.stderr.strip() == (f"dalib: error: the run in {out} trained on 2 process(es), this one has 1: resume "
                                    "it with as many (torchrun --nproc_per_node 2, or one process without torchrun), "
                                    "or choose another --out")
    assert json.loads((out / "result.json").read_text()) == result


def _torchrun(args, tmp_path, timeout=240):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    env["TMPDIR"] = str(tmp_path)  # (torchrun leaves its log folders there)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *args],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp_path)


def test_every_torchrun_rank_ends_with_the_same_model_and_logs_the_mean_loss(tmp_path):
    """BatchNorm's statistics are rank 0's on every rank (only gradients were averaged: rank 1
    returned other statistics and accuracies), and the logged losses are the ranks' mean."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import json, os, sys\n"
        "from dalib.runner import RunConfig, run\n"
        "seen = []\n"
        "res = run(RunConfig(method='dann', src='mnist', tgt='usps', steps=6, batch_size=16, device='cpu', log_every=2,\n"
        "                    method_config={'hidden': 32}), sys.argv[1], progress_bar=False,\n"
        "          on_step=lambda step, logs: seen.append(logs))\n"
        "json.dump({'acc': [res.source_accuracy, res.target_accuracy], 'logs': seen,\n"
        "           'buffers': [float(b.double().sum()) for b in res.model.buffers()]},\n"
        "          open(f\"rank-{os.environ['RANK']}.json\", 'w'))\n")
    proc = _torchrun([str(probe), str(tmp_path / "run")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["loss/total"] for line in logged] == [ranks[0]["logs"][i]["total"] for i in (1, 3, 5)]


def test_a_torchrun_resume_with_uneven_shares_of_the_batch_ends_as_the_uninterrupted_run(tmp_path):
    """A batch of 7 on 2 ranks: shares of 4 and 3 draw their dropout masks differently, and the
    checkpoint had kept rank 0's generator state alone, which the resume gave both ranks."""
    probe = tmp_path / "probe.py"
    probe.write_text(  # one run per process, as torchrun starts them: uninterrupted, killed at step 15, resumed
        "import hashlib, json, os, sys\n"
        "from dalib.runner import RunConfig, run\n"
        "class Killed(Exception): pass\n"
        "def kill(step, logs):\n"
        "    if step == 15: raise Killed\n"
        "cfg = RunConfig(method='dann', src='mnist', tgt='usps', steps=24, batch_size=7, device='cpu',\n"
        "                checkpoint_every=10, method_config={'hidden': 32})\n"
        "out, how = sys.argv[1], sys.argv[2]\n"
        "try: result = run(cfg, out, resume=how == 'resume', progress_bar=False, on_step=kill if how == 'cut' else None)\n"
        "except Killed: sys.exit(0)\n"
        "digest = hashlib.sha256(b''.join(t.detach().numpy().tobytes() for t in result.model.state_dict().values()))\n"
        "json.dump(digest.hexdigest(), open(f\"{how}-{os.environ['RANK']}.json\", 'w'))\n")
    for out, how in (("full", "full"), ("cut", "cut"), ("cut", "resume")):
        proc = _torchrun([str(probe), out, how], tmp_path)
        assert proc.returncode == 0, (how, proc.stderr[-2000:])
    for r in (0, 1):
        assert json.loads((tmp_path / f"resume-{r}.json").read_text()) == json.loads((tmp_path / f"full-{r}.json").read_text())


def test_a_torchrun_process_may_run_twice(tmp_path):
    """The first run destroyed the process group it had made; the second's init then hung in
    torchrun's rendezvous (a sweep in one script under torchrun never got past its first run)."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os\n"
        "from dalib.runner import RunConfig, run\n"
        "cfg = RunConfig(method='source_only', src='mnist', tgt='usps', steps=3, batch_size=8, device='cpu')\n"
        "results = [run(cfg, None, progress_bar=False).source_accuracy for _ in range(2)]\n"
        "open(f\"rank-{os.environ['RANK']}.txt\", 'w').write(str(results))\n")
    proc = _torchrun([str(probe)], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all((tmp_path / f"rank-{r}.txt").exists() for r in (0, 1))


def test_a_method_check_that_fails_on_one_torchrun_rank_is_one_line_on_every_rank(tmp_path):
    """coral needs 2 samples a side; a batch of 3 gives rank 1 one: it had failed on rank 1
    alone, and rank 0 died waiting in the gradients' all-reduce with gloo's traceback."""
    import sys
    from pathlib import Path

    proc = _torchrun([str(Path(sys.executable).parent / "dalib"), "run", "coral", "--src", "mnist", "--tgt", "usps",
                      "--steps", "3", "--batch-size", "3", "--device", "cpu", "--quiet", "--out", str(tmp_path / "c3")],
                     tmp_path)
    assert proc.returncode != 0 and "[rank" not in proc.stderr, proc.stderr[-3000:]  # (torchrun's own report stays)
    said = [line for line in proc.stderr.splitlines() if line.startswith("dalib: error:")]
    assert said == ["dalib: error: coral needs at least 2 samples per side, got 1 and 1 (on process 1 of 2, whose "
                    "share of each batch of 3 is 1 samples)"] * 2, proc.stderr[-3000:]


def test_a_shallow_run_under_torchrun_is_refused_in_one_line(tmp_path, data_root):
    import sys
    from pathlib import Path

    dalib_cli = Path(sys.executable).parent / "dalib"
    proc = _torchrun([str(dalib_cli), "run", "coral", "--dataset", "office-caltech-surf", "--data-root", str(data_root),
                      "--src", "A", "--tgt", "W", "--out", str(tmp_path / "coral")], tmp_path)
    assert proc.returncode != 0
    # each rank refuses in one line; torchrun stops the other with SIGTERM as soon as one has
    # failed, so a rank that had not got that far yet says it was terminated instead
    refused = "dalib: error: the shallow form of coral fits in one process: run it without torchrun"
    said = [line for line in proc.stderr.splitlines() if line.startswith("dalib:")]
    assert len(said) <= 2 and said.count(refused + " (or --mode deep to train a network on every process)") >= 1, said
    assert all(line.startswith((refused, "dalib: terminated")) for line in said), said
    assert not (tmp_path / "coral").exists()


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"lr": float("inf")}, "lr must be a finite number"),
        ({"bottleneck_dim": 0}, "bottleneck_dim must be at least 1"),
        ({"eval_every": -1}, "eval_every must be >= 0"),
        ({"image_size": 0}, "image_size must be at least 1"),
        ({"steps": 2.5}, "steps must be an integer"),
        ({"steps": "2"}, "steps must be an integer"),
        ({"batch_size": True}, "batch_size must be an integer"),
        ({"momentum": -1.0}, "momentum must be in [0, 1)"),
        ({"weight_decay": float("nan")}, "weight_decay must be a finite number"),
        ({"seed": -3}, "seed must be >= 0"),
        ({"method_config": [("hidden", 3)]}, "method_config must be a table"),
        # "" had meant the working directory (data_root) or the default (arch, dataset)
        ({"data_root": ""}, "data_root is empty: give a value or leave it out"),
        ({"arch": " "}, "arch is empty"),
        ({"dataset": ""}, "dataset is empty"),
        ({"src": ""}, "src is empty: give a value"),
    ],
)
def test_run_config_rejects_bad_values_with_a_dalib_error(kwargs, fragment):
    with pytest.raises(dalib.DalibError, match=fragment.replace("[", r"\[").replace(")", r"\)")):
        RunConfig(**kwargs)


def test_run_config_takes_numpy_numbers_and_paths_as_plain_values(tmp_path):
    cfg = RunConfig(steps=np.int64(3), lr=np.float32(0.5), data_root=tmp_path)
    assert type(cfg.steps) is int and type(cfg.lr) is float and cfg.data_root == str(tmp_path)
    assert RunConfig(lr=1).to_dict() == RunConfig(lr=1.0).to_dict()  # one run, however the number is written
    json.dumps(cfg.to_dict())  # result.json can hold it


def test_a_shallow_classifier_asked_of_a_deep_run_is_warned_about():
    with pytest.warns(UserWarning, match="classifier 'svm' is for the shallow form"):
        run(RunConfig(method="source_only", src="mnist", tgt="usps", steps=1, batch_size=8, classifier="svm"),
            None, progress_bar=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        run(RunConfig(method="source_only", src="mnist", tgt="usps", steps=1, batch_size=8), None, progress_bar=False)


def test_deep_settings_given_to_a_shallow_run_are_warned_about(toy_dataset):
    """On a feature dataset the default mode fits the shallow form: steps and arch were
    ignored without a word (a run the user meant to fine-tune from had no network)."""
    import warnings

    base = dict(method="coral", dataset=toy_dataset, src="src", tgt="tgt")
    with pytest.warns(UserWarning, match=r"^arch, steps are for deep training: the shallow form of coral ignores them"):
        res = run(RunConfig(**base, arch="mlp", steps=7), None, progress_bar=False)
    assert res.mode == "shallow"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # where and how it runs, and what it fits: no warning
        run(RunConfig(**base, seed=3, classifier="linear", device="cpu", method_config={"reg": 0.5}), None,
            progress_bar=False)


def _draws() -> tuple[float, float, float]:
    import random

    return random.random(), float(np.random.rand()), float(torch.rand(1))


@pytest.mark.parametrize("mode", ["deep", "shallow"])
def test_a_run_gives_the_callers_random_states_back(toy_dataset, mode):
    import random

    def seed_all():
        random.seed(123)
        np.random.seed(123)
        torch.manual_seed(123)

    seed_all()
    np.random.standard_normal()  # numpy's legacy normals come in pairs: the second waits in a cache
    expected = _draws(), np.random.standard_normal()
    seed_all()
    np.random.standard_normal()
    run(RunConfig(method="coral", mode=mode, dataset=toy_dataset, src="src", tgt="tgt", steps=3, batch_size=8,
                  seed=5), None, progress_bar=False)
    assert (_draws(), np.random.standard_normal()) == expected  # what the caller would have drawn without run


def test_a_cuda_run_starts_cuda_before_keeping_the_callers_random_state(monkeypatch):
    """A fresh process whose run trains on CUDA: CUDA is initialised first (applying the
    caller's earlier seed), so its random state is kept and given back too."""
    from dalib.runner import caller_random_state

    calls = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: bool(calls))
    monkeypatch.setattr(torch.cuda, "init", lambda: calls.append("init"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # nothing to snapshot on this machine
    with caller_random_state(uses_cuda=False):
        pass
    assert calls == []  # a CPU run leaves CUDA alone
    with caller_random_state(uses_cuda=True):
        pass
    assert calls == ["init"]
    with caller_random_state(uses_cuda=True):
        pass
    assert calls == ["init"]  # once only


def test_a_run_with_a_warning_points_at_its_caller():
    with pytest.warns(UserWarning, match="classifier 'svm'") as caught:
        run(RunConfig(method="source_only", src="mnist", tgt="usps", steps=1, batch_size=8, classifier="svm"),
            None, progress_bar=False)
    assert caught[0].filename == __file__


def _pretend_gpus(monkeypatch, count: int, world: int = 1, local_rank: int = 0) -> None:
    """torch sees ``count`` CUDA GPUs (only device resolution runs: nothing touches them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))


def test_device_resolution_on_one_process(monkeypatch):
    from dalib.errors import ConfigError
    from dalib.runner import resolve_device

    _pretend_gpus(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")
    _pretend_gpus(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="sees 2 CUDA GPU"):
        resolve_device("cuda:2")
    for bad in ("mps", "tpu", "gpu", ""):
        with pytest.raises(ConfigError, match="bad device"):
            resolve_device(bad)
    # a torch.device, as torch's own functions take one; anything else in one line (None had been
    # torch's TypeError of several lines, and 0 would be cuda:0)
    assert resolve_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for bad in (None, 0, b"cpu"):
        with pytest.raises(ConfigError, match=r"^device must be a string such as 'cpu' or 'cuda', or a torch.device, got "):
            resolve_device(bad)
    assert RunConfig(device=torch.device("cuda", 1)).device == "cuda:1"  # kept as its name, which the JSON holds


def test_each_torchrun_rank_takes_the_gpu_of_its_local_rank(monkeypatch):
    from dalib.errors import ConfigError
    from dalib.runner import resolve_device

    _pretend_gpus(monkeypatch, 2, world=2, local_rank=1)
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")  # gloo on CPU processes
    with pytest.raises(ConfigError, match="every rank on one GPU"):
        resolve_device("cuda:0")
    _pretend_gpus(monkeypatch, 2, world=4, local_rank=3)  # more ranks on this node than GPUs
    with pytest.raises(ConfigError, match="sees 2 CUDA GPU"):
        resolve_device("cuda")


def _three_domains(request):
    rng = np.random.default_rng({"a": 0, "b": 1, "c": 2}[request.domain])
    y = np.arange(120) % 3
    x = rng.normal(0, 1, size=(120, 6)) + y[:, None] + {"a": 0.0, "b": 2.0, "c": -3.0}[request.domain]
    return Domain.from_arrays(request.domain, x.astype(np.float32), y, num_classes=3, dataset_name="toy-three")


@pytest.fixture(scope="module")
def toy_three() -> str:
    if "toy-three" not in list_datasets():
        register_dataset(DatasetInfo(name="toy-three", description="three shifted Gaussian domains (tests)",
                                     domains=("a", "b", "c"), kind="features", num_classes=3, needs="embedded"),
                         _three_domains)
    return "toy-three"


@pytest.mark.filterwarnings("ignore:finetune has no starting point")
@pytest.mark.parametrize("method", ["source_only", "kmm", "finetune"])
def test_a_source_only_method_trains_the_same_network_whatever_the_target(tmp_path, toy_three, method):
    """source_only, kmm (its weights aside) and finetune learn from the source alone: the target
    batch is not forwarded, so it cannot enter BatchNorm's statistics. DANN, which does read the
    target, trains another network for another target."""
    def trained(m: str, tgt: str, cfg: dict | None = None) -> dict:
        c = RunConfig(method=m, dataset=toy_three, src="a", tgt=tgt, steps=12, batch_size=16, mode="deep",
                      method_config=cfg or {})
        run(c, tmp_path / f"{m}-{tgt}", progress_bar=False)
        return load_checkpoint(tmp_path / f"{m}-{tgt}" / "checkpoint.pt")["model"]

    cfg = {"B": 1.0, "eps": 0.0} if method == "kmm" else None  # weights all 1, whatever the target
    b, c = trained(method, "b", cfg), trained(method, "c", cfg)
    assert b.keys() == c.keys() and all(torch.equal(b[k], c[k]) for k in b)
    assert any(k.endswith("running_mean") for k in b)  # the bottleneck's BatchNorm statistics among them
    b, c = trained("dann", "b", {"hidden": 8}), trained("dann", "c", {"hidden": 8})
    assert not torch.equal(b["bottleneck.1.running_mean"], c["bottleneck.1.running_mean"])


def test_the_features_the_losses_see_are_not_masked_by_dropout():
    from dalib.models import build_model

    model = build_model("identity", (10,), 3, bottleneck_dim=64).train()
    x = torch.randn(32, 10)
    first, second = model(x), model(x)
    assert torch.equal(first.features, second.features)  # deterministic in training mode
    assert not torch.equal(first.logits, second.logits)  # dropout acts on the head's input
    model.eval()
    assert torch.equal(model(x).logits, model(x).logits)


def test_plain_sgd_and_huge_seeds_train(tmp_path, toy_dataset):
    from dalib.runner import _Stream

    base = dict(method="source_only", dataset=toy_dataset, src="src", tgt="tgt", steps=5, batch_size=16, mode="deep")
    res = run(RunConfig(**base, momentum=0.0), tmp_path / "sgd", progress_bar=False)
    assert np.isfinite(res.target_accuracy)
    big = 2**32 - 1
    assert sorted(_Stream(10, 10, seed=big).indices(0).tolist()) == list(range(10))
    res = run(RunConfig(**base, seed=big), tmp_path / "seed", progress_bar=False)
    assert np.isfinite(res.target_accuracy)
    # torch's CPU generator keeps a seed's low 32 bits: 2**32 would have been seed 0's run
    assert torch.equal(torch.randperm(9, generator=torch.Generator().manual_seed(2**32)),
                       torch.randperm(9, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ConfigError, match=r"^seed must be below 2\*\*32, got 4294967296$"):
        RunConfig(**base, seed=2**32)


def test_a_batch_batchnorm_cannot_normalise_is_one_clear_error(tmp_path, toy_dataset):
    from dalib.errors import ConfigError

    base = dict(dataset=toy_dataset, src="src", tgt="tgt", steps=2, batch_size=1, mode="deep")
    with pytest.raises(ConfigError, match="source_only needs batch_size >= 2"):
        run(RunConfig(method="source_only", **base), tmp_path / "one", progress_bar=False)
    assert not (tmp_path / "one").exists()
    # a method that forwards the target too has two samples in each pass
    assert np.isfinite(run(RunConfig(method="dann", **base), None, progress_bar=False).source_accuracy)


def test_a_second_run_into_a_folder_being_written_is_refused(tmp_path, toy_dataset):
    """Before its first checkpoint a running run leaves nothing that says the folder is taken:
    its claim does, and a second run there is refused instead of being overwritten later."""
    import subprocess
    import sys

    from dalib.errors import ConfigError
    from dalib.runner import LOCK

    base = dict(method="source_only", dataset=toy_dataset, src="src", tgt="tgt", steps=3, batch_size=16, mode="deep")
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')  # the first run's lines so far
    claims = ("import fcntl, os, sys, time\n"  # a live run's claim: its id, under its flock
              "fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR)\n"
              "fcntl.flock(fd, fcntl.LOCK_EX)\n"
              "os.write(fd, str(os.getpid()).encode())\n"
              "print('held', flush=True)\n"
              "time.sleep(60)\n")
    writer = subprocess.Popen([sys.executable, "-c", claims, str(out / LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "held\n"
        with pytest.raises(ConfigError, match=f"being written by another dalib run \\(process {writer.pid}\\): wait "
                                              "for it or choose another --out$"):
            run(RunConfig(**base), out, progress_bar=False)
        assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n' and (out / LOCK).exists()
        # after its first checkpoint too: it had said "pass --resume", which the claim refuses in turn
        (out / "checkpoint.pt").write_bytes(b"the writer's")
        with pytest.raises(ConfigError, match=f"being written by another dalib run \\(process {writer.pid}\\): wait"):
            run(RunConfig(**base), out, progress_bar=False)
        (out / "checkpoint.pt").unlink()
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
    # the claim of a process that is gone is taken over, and released when the run ends
    run(RunConfig(**base), out, progress_bar=False)
    assert (out / "result.json").exists() and not (out / LOCK).exists()
    # an interrupted run gives its claim up too
    def stop(step, logs):
        raise _Killed

    with pytest.raises(_Killed):
        run(RunConfig(**base), tmp_path / "killed", progress_bar=False, on_step=stop)
    assert not (tmp_path / "killed" / LOCK).exists()


def test_a_cluster_requeue_takes_a_killed_runs_claim_over_and_a_refused_run_touches_nothing(tmp_path, monkeypatch):
    """A job killed and requeued on a cluster: the lock of the killed run names an id that another
    process may have now (here, or on the node that runs it again: the ids are each node's). That
    live id had refused the requeued run until someone removed the lock by hand; the flock alone
    tells a live claim. A second run refused by a live one (the same job twice, on another node)
    had first removed the live run's checkpoint as it was being written, its writer being no
    process of this node; and a file system that does not lock files (NFS without its lock
    service, Lustre's noflock) had read as a run writing there for ever, where the CLI's default
    folder then moved on without end, one empty folder at a time."""
    import errno
    import fcntl
    import subprocess
    import sys

    from click.testing import CliRunner

    from dalib.cli import cli
    from dalib.errors import ConfigError
    from dalib.runner import LOCK

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "job"
    args = ["run", "source_only", "--src", "mnist", "--tgt", "usps", "--steps", "4", "--batch-size", "16",
            "--checkpoint-every", "2", "--out", str(out)]
    runner = CliRunner()
    assert runner.invoke(cli, [*args[:-1], str(tmp_path / "done")]).exit_code == 0  # a run to evaluate
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # an unrelated live process
    try:
        res = runner.invoke(cli, args)
        assert res.exit_code == 0, res.output
        result = json.loads((out / "result.json").read_text())
        (out / "result.json").unlink()  # as if killed after its checkpoint at step 4, its id now another's
        (out / LOCK).write_text(str(other.pid))
        res = runner.invoke(cli, args)
        assert res.exit_code == 2 and res.stderr.strip().endswith("already holds a run: pass --resume (resume=True "
                                                                  "from Python) to continue it, or choose another --out")
        res = runner.invoke(cli, [*args, "--resume"])
        assert res.exit_code == 0, res.output
        resumed = json.loads((out / "result.json").read_text())
        assert {**resumed, "seconds": 0} == {**result, "seconds": 0} and not (out / LOCK).exists()

        (out / "result.json").unlink()
        stale = out / f".checkpoint.pt.dalib-tmp{other.pid + 10**6}"  # a writer of another node: no process here
        stale.write_bytes(b"half a checkpoint")
        holder = subprocess.Popen(
            [sys.executable, "-c", "import fcntl, os, sys, time\n"
                                   "fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR)\n"
                                   "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                                   "os.write(fd, sys.argv[2].encode())\n"
                                   "print('held', flush=True)\n"
                                   "time.sleep(60)\n", str(out / LOCK), str(os.getpid())],
            stdout=subprocess.PIPE, text=True)  # (its id this process's: ids are each node's, or container's)
        try:
            assert holder.stdout.readline() == "held\n"
            res = runner.invoke(cli, [*args, "--resume"])
            assert res.exit_code == 2 and res.stderr.strip() == (
                f"dalib: error: {out} is being written by another dalib run (process {os.getpid()}): wait for it or "
                "choose another --out")
            assert stale.read_bytes() == b"half a checkpoint"  # the live run's, on its node
            assert (out / LOCK).read_text() == str(os.getpid())  # its claim, which the refused run never held
            predictions = out / "preds.csv"  # `dalib eval --predictions` into it: its own leftovers alone go
            (out / ".preds.csv.dalib-tmp999999999").write_text("a killed eval's")
            res = runner.invoke(cli, ["eval", str(tmp_path / "done"), "--predictions", str(predictions)])
            assert res.exit_code == 0, res.output
            assert stale.read_bytes() == b"half a checkpoint" and not (out / ".preds.csv.dalib-tmp999999999").exists()
        finally:
            holder.kill()
            holder.wait()
            holder.stdout.close()
        res = runner.invoke(cli, [*args, "--resume"])  # its run gone: the claim and the folder are this one's
        assert res.exit_code == 0, res.output
        assert not stale.exists() and (out / "result.json").exists()
    finally:
        other.kill()
        other.wait()

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    fresh = tmp_path / "nfs"
    with pytest.raises(ConfigError, match=rf"^cannot claim {fresh / LOCK}: its file system does not lock files \(No "
                                          r"locks available\), which keeps two runs from writing one folder: write to "
                                          r"a folder on another file system$"):
        run(RunConfig(method="source_only", src="mnist", tgt="usps", steps=2, batch_size=16), fresh, progress_bar=False)
    assert not (fresh / LOCK).exists()
    res = runner.invoke(cli, args[:-2])  # the default folder: one line, not one folder after another for ever
    assert res.exit_code == 2 and "its file system does not lock files" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert [p.name for p in (tmp_path / "runs").iterdir()] == []


def test_a_run_refused_by_one_that_made_the_folder_meanwhile_leaves_its_files_alone(tmp_path, toy_dataset,
                                                                                    monkeypatch):
    """The second run found no folder, then the first made and claimed it (its metrics file
    open, empty): the refused run had removed that file as its own, and the first run's lines
    went into an unlinked file. Played by a process that claims the folder while the second
    run loads its data."""
    import dalib.data
    from dalib.errors import ConfigError
    from dalib.runner import LOCK

    out = tmp_path / "run"
    holders = []
    real = dalib.data.load_domain

    def slow_data(*args, **kwargs):
        if not holders:  # the first run, meanwhile
            out.mkdir()
            (out / "metrics.jsonl").touch()
            holders.append(_claiming_process(out / LOCK))
        return real(*args, **kwargs)

    monkeypatch.setattr(dalib.data, "load_domain", slow_data)  # (run imports it from there)
    base = dict(method="source_only", dataset=toy_dataset, src="src", tgt="tgt", steps=3, batch_size=16, mode="deep")
    try:
        with pytest.raises(ConfigError, match="being written by another dalib run"):
            run(RunConfig(**base), out, progress_bar=False)
        assert (out / "metrics.jsonl").exists() and (out / LOCK).exists()
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def test_a_claim_file_this_user_cannot_write_is_one_line(tmp_path, monkeypatch):
    """A teammate's lock (created 0644 whatever the umask): a PermissionError traceback had come."""
    import errno

    from dalib.errors import ConfigError
    from dalib.runner import claim_file

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(ConfigError, match=r"^cannot claim .*\.lock: Permission denied$"):
        claim_file(tmp_path / ".x.lock", "busy", "advice")


def test_a_claim_held_by_a_live_process_is_not_taken_over_whatever_its_file_says(tmp_path):
    """Two processes that find a dead process's claim at the same moment: one takes it over,
    and the other, having read the dead id a moment before, must not take it from the first
    (it used to delete the first one's fresh claim and write its own: two writers on one
    file). Played here by a process that holds the claim while its file names a dead one. When
    the holder dies, the system drops its flock and the claim is free again."""
    import subprocess
    import sys

    from dalib.errors import ConfigError
    from dalib.runner import claim_file, release_file

    lock = tmp_path / ".claim.lock"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    holder = _claiming_process(lock)
    try:
        assert lock.read_text() == str(holder.pid)
        lock.write_text(str(gone.pid))  # what the late process had read: a dead process's id
        with pytest.raises(ConfigError, match=r"^the folder is taken \(.*\): wait for it or go elsewhere$"):
            claim_file(lock, "the folder is taken", "or go elsewhere")
        assert lock.read_text() == str(gone.pid)  # left as it was
    finally:
        holder.kill()
        holder.wait()
    claim_file(lock, "the folder is taken", "or go elsewhere")  # the holder died: its claim is free
    assert lock.read_text() == str(os.getpid())
    release_file(lock)
    assert not lock.exists()


def test_the_claim_of_a_killed_process_not_yet_reaped_is_free(tmp_path):
    """A process killed a moment ago stays a zombie until its parent reaps it (in a container
    whose first process never reaps, for good): its flock is gone, and its claim with it (a
    resume right after ``kill -9`` was refused while the zombie lasted)."""
    import fcntl
    import signal

    from dalib.runner import claim_file, release_file

    lock = tmp_path / ".claim.lock"
    holder = _claiming_process(lock)
    try:
        os.kill(holder.pid, signal.SIGKILL)
        for _ in range(500):  # until it is a zombie (not reaped: no wait() yet) whose flock has gone
            stat = open(f"/proc/{holder.pid}/stat").read()
            fd = os.open(lock, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                free = True
            except OSError:
                free = False
            finally:
                os.close(fd)
            if free and stat[stat.rindex(")") + 2] == "Z":
                break
            time.sleep(0.01)
        else:
            pytest.fail("the killed process did not become a zombie without its flock")
        assert lock.read_text() == str(holder.pid)
        claim_file(lock, "the folder is taken", "or go elsewhere")
        assert lock.read_text() == str(os.getpid())
        release_file(lock)
    finally:
        holder.kill()
        holder.wait()


def test_an_empty_out_dir_is_refused_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="out_dir is empty"):
        run(_config(steps=2), "", progress_bar=False)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_keeps_the_file_as_it_was_and_says_so_in_one_line(tmp_path):
    """torch.save reports a full disk as a RuntimeError ("unexpected pos ..."), open() an
    OSError: both become one DataError naming the file, and the old file is kept whole."""
    from dalib.runner import atomic_write_bytes

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"the previous checkpoint")

    def full_disk(fh):
        fh.write(b"half a checkp")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2355136 vs 2355032")

    with pytest.raises(DataError, match=r"cannot write .*checkpoint.pt \(\[enforce fail.*unexpected pos.*MiB free on "
                                        r"its disk\); the file as it was is kept"):
        atomic_write_bytes(path, full_disk)
    assert path.read_bytes() == b"the previous checkpoint" and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    with pytest.raises(DataError, match="cannot write .*no_folder.*No such file or directory"):
        atomic_write_bytes(tmp_path / "no_folder" / "x.pt", lambda fh: fh.write(b"x"))


def test_ctrl_c_during_a_checkpoint_write_finishes_the_file_then_interrupts(tmp_path):
    """torch.save turns a KeyboardInterrupt inside its writer into a RuntimeError, which had
    read as a failed write ("cannot write checkpoint.pt", exit 2). The interrupt now waits
    for the file to be in place, then is raised as itself; the handler is the caller's again."""
    import signal

    from dalib.runner import atomic_write_bytes

    class SignalledFile:  # Ctrl-C lands in the middle of torch's writing
        def __init__(self, fh):
            self.fh, self.writes = fh, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return self.fh.write(data)

        def flush(self):
            self.fh.flush()

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"the previous checkpoint")
    state = {"weights": torch.arange(1000.0), "step": torch.tensor(7)}
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, lambda fh: torch.save(state, SignalledFile(fh)))
    saved = torch.load(path)
    assert torch.equal(saved["weights"], state["weights"]) and int(saved["step"]) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_api_says_what_it_takes():
    from dalib.errors import ConfigError

    with pytest.raises(ConfigError, match="dalib.run takes a dalib.RunConfig, got dict"):
        run({"method": "dann", "src": "mnist", "tgt": "usps"})
    with pytest.raises(ConfigError, match="resume=True continues a run from its output folder: give out_dir"):
        run(_config(steps=2), None, resume=True)  # it used to train a fresh run silently


def test_numpy_values_and_paths_in_a_config_are_kept_as_plain_python(tmp_path):
    """A sweep's np.linspace value trains, and the run it wrote loads, resumes and reports:
    its checkpoint (weights_only) and result.json take plain Python values only."""
    from dalib.runner import RunConfig, load_model, run

    cfg = RunConfig(method="dann", src=np.array(["mnist"])[0], tgt="usps", steps=2, batch_size=8, device="cpu",
                    method_config={"trade_off": np.float32(0.5), "hidden": np.int64(16), "note": tmp_path})
    assert type(cfg.src) is str and cfg.method_config == {"trade_off": 0.5, "hidden": 16, "note": str(tmp_path)}
    assert [type(v) for v in cfg.method_config.values()] == [float, int, str]
    with pytest.raises(ConfigError, match="note"):  # dann has no such hyperparameter: one line, not a crash later
        run(cfg, tmp_path / "r", progress_bar=False)
    cfg = RunConfig(method="dann", src="mnist", tgt="usps", steps=2, batch_size=8, device="cpu",
                    method_config={"trade_off": np.linspace(0.5, 1.0, 1)[0], "hidden": np.int64(16)})
    first = run(cfg, tmp_path / "r", progress_bar=False)
    assert load_model(tmp_path / "r").classes == first.model.classes == [str(i) for i in range(10)]
    assert first.model.step == 2 and first.model.spec["arch"] == load_model(tmp_path / "r").spec["arch"]
    again = run(cfg, tmp_path / "r", resume=True, progress_bar=False)  # a finished run: read back, not rewritten
    assert again.target_accuracy == first.target_accuracy
    assert json.loads((tmp_path / "r" / "result.json").read_text())["run_config"]["method_config"]["hidden"] == 16


def test_a_run_trains_in_float32_with_gradients_whatever_the_callers_settings():
    """Inside a caller's no_grad or inference_mode block, with float64 as the default dtype,
    a run trains as it does anywhere else (DANN failed on a float64 discriminator, and every
    method blamed itself for a loss without gradient), and the caller's settings come back."""
    from dalib.runner import RunConfig, run

    cfg = RunConfig(method="dann", src="mnist", tgt="usps", steps=3, batch_size=8, device="cpu",
                    method_config={"hidden": 16})
    plain = run(cfg, None, progress_bar=False)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            quiet = run(cfg, None, progress_bar=False)
            assert not torch.is_grad_enabled() and torch.get_default_dtype() == torch.float64
        with torch.inference_mode():
            inferred = run(cfg, None, progress_bar=False)
    finally:
        torch.set_default_dtype(before)
    assert plain.target_accuracy == quiet.target_accuracy == inferred.target_accuracy
    assert next(quiet.model.parameters()).dtype == torch.float32
    # a caller's autocast does not reach the run's losses and evaluation (they ran in bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = run(cfg, None, progress_bar=False)
        assert torch.is_autocast_enabled("cpu")
    assert (cast.history, cast.target_accuracy) == (plain.history, plain.target_accuracy)


def test_load_model_draws_nothing_of_the_callers_and_builds_in_float32(tmp_path):
    """The random initialisation that the checkpoint's weights replace used the caller's torch
    generator, and the caller's default dtype (a float64 network, where run() gives float32)."""
    from dalib.runner import RunConfig, load_model, run

    run(RunConfig(method="source_only", src="mnist", tgt="usps", steps=2, batch_size=8), tmp_path / "r",
        progress_bar=False)
    torch.manual_seed(0)
    want = torch.rand(3)
    before = torch.get_default_dtype()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)
    np.random.seed(0)
    np.random.standard_normal()
    try:
        model = load_model(tmp_path / "r")
    finally:
        torch.set_default_dtype(before)
    assert torch.equal(torch.rand(3), want)
    np.random.seed(0)
    assert np.random.standard_normal() != np.random.standard_normal()  # (the pair's second value, from the cache)
    np.random.seed(0)
    np.random.standard_normal()
    cached = np.random.standard_normal()
    np.random.seed(0)
    np.random.standard_normal()
    load_model(tmp_path / "r")
    assert np.random.standard_normal() == cached
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_load_model_in_another_thread_while_a_run_trains_is_one_line(tmp_path):
    """A sweep that loads earlier runs' networks in a thread while the next run trains: load_model
    builds with the process's random generators (saved and given back), which the run draws its
    dropout from, so the run ended elsewhere than alone, without a word. It is refused there;
    from the run's own callback (its thread, between two steps) and after the run it loads."""
    import threading

    from dalib.runner import RunConfig, load_model, run

    run(RunConfig(method="source_only", src="mnist", tgt="usps", steps=2, batch_size=8), tmp_path / "r",
        progress_bar=False)
    training, release, seen = threading.Event(), threading.Event(), {}

    def on_step(step, logs):
        if step == 1:
            seen["callback"] = load_model(tmp_path / "r").step
            training.set()
            release.wait(60)

    worker = threading.Thread(target=run, args=(RunConfig(method="source_only", src="mnist", tgt="usps", steps=3,
                                                          batch_size=8), None),
                              kwargs={"progress_bar": False, "on_step": on_step})
    worker.start()
    try:
        assert training.wait(60)
        with pytest.raises(ConfigError, match=r"^a dalib.run is running in another thread of this process: "
                                              r"load_model builds the network with the process's random generators"):
            load_model(tmp_path / "r")
    finally:
        release.set()
        worker.join(60)
    assert seen["callback"] == 2 and load_model(tmp_path / "r").step == 2


def test_load_model_in_several_threads_at_once_loads_in_each(tmp_path):
    """A pool of threads loading networks (as a server does): a load that met another one
    building was refused as if a run trained, so most of 8 loads in 4 threads failed."""
    from concurrent.futures import ThreadPoolExecutor

    from dalib.runner import RunConfig, load_model, run

    run(RunConfig(method="source_only", src="mnist", tgt="usps", steps=2, batch_size=8), tmp_path / "r",
        progress_bar=False)
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        expected = load_model(tmp_path / "r")(x).logits
    state = torch.random.get_rng_state()
    with ThreadPoolExecutor(4) as pool:
        models = list(pool.map(lambda _: load_model(tmp_path / "r"), range(8)))
    assert torch.equal(torch.random.get_rng_state(), state)  # each gave the generators back
    with torch.no_grad():
        assert all(torch.equal(m(x).logits, expected) for m in models)


def test_a_resume_with_another_process_count_is_refused_before_anything_is_written(tmp_path):
    cfg = _config(log_every=1)
    _killed_at(cfg, tmp_path / "cut", 14)  # checkpoint at 10, lines up to 14
    ckpt = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    ckpt["world_size"] = 2  # as torchrun --nproc_per_node 2 had written it
    torch.save(ckpt, tmp_path / "cut" / "checkpoint.pt")
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError, match=r"trained on 2 process\(es\), this one has 1"):
        run(cfg, tmp_path / "cut", resume=True, progress_bar=False)
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == lines  # not yet trimmed to the checkpoint's step


def test_a_second_run_in_the_same_process_at_once_is_refused_and_leaves_the_first_ones_claim(tmp_path):
    """Runs seed and restore the process's random states: two at once (threads, or a run from a
    callback) changed each other's numbers silently, and the refused one released the claim of
    the one still writing (a third process could then write into its folder)."""
    from dalib.runner import LOCK, RunConfig, run

    cfg = RunConfig(method="source_only", src="mnist", tgt="usps", steps=3, batch_size=8, checkpoint_every=0)
    seen = []

    def again(step, logs):
        if step == 1:
            with pytest.raises(ConfigError, match="another dalib.run is running in this process"):
                run(cfg, tmp_path / "a", progress_bar=False)
            seen.append((tmp_path / "a" / LOCK).read_text())

    alone = run(cfg, None, progress_bar=False)
    first = run(cfg, tmp_path / "a", progress_bar=False, on_step=again)
    assert seen == [str(os.getpid())]  # the claim still the first run's while it went on
    assert first.history == alone.history
    assert run(cfg, None, progress_bar=False).history == alone.history  # free again afterwards


@pytest.mark.parametrize("workers", [0, 1])
def test_ctrl_c_during_a_step_saves_that_step_and_a_resume_ends_as_the_uninterrupted_run(tmp_path, workers):
    """An interrupt (Ctrl-C, or SIGTERM where the command line takes it Ctrl-C's way) waits for
    the step's end, which the run saves before it stops: a resume had gone back to the last
    checkpoint (up to --checkpoint-every steps lost, 500 by default)."""
    import signal

    full = run(_config(workers=workers), tmp_path / "full", progress_bar=False)

    def interrupt(done, logs):
        if done == 15:
            os.kill(os.getpid(), signal.SIGINT)  # it comes inside the step: it waits for the step's end

    with pytest.raises(KeyboardInterrupt) as caught:
        run(_config(workers=workers), tmp_path / "cut", progress_bar=False, on_step=interrupt)
    assert caught.value.saved_step == 15
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 15  # not 10, the last regular one
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    resumed, trained = _resume(_config(workers=workers), tmp_path / "cut")
    assert trained == list(range(16, 31))  # from the step it stopped at
    assert (resumed.source_accuracy, resumed.target_accuracy) == (full.source_accuracy, full.target_accuracy)
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()
    w_full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    w_cut = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["model"]
    assert all(torch.equal(value, w_cut[key]) for key, value in w_full.items())


def test_sigusr2_to_a_python_program_saves_the_step_then_ends_the_process_as_sigusr2_does(tmp_path):
    """SIGUSR1/SIGUSR2, a scheduler's warning before its time limit (SLURM's --signal), end a
    process by default: the run had died at once, without a checkpoint. It is now a stop as
    SIGTERM's is (below); a program that handles SIGUSR1 itself keeps its handler."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "job.py"
    script.write_text(
        "import os, signal, sys\n"
        "import dalib\n"
        "seen = []\n"
        "signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))\n"
        "def stop(done, logs):\n"
        "    if done == 3:\n"
        "        os.kill(os.getpid(), signal.SIGUSR1)\n"
        "    if done == 7:\n"
        "        print('own handler:', seen, flush=True)\n"
        "        os.kill(os.getpid(), signal.SIGUSR2)\n"
        "cfg = dalib.RunConfig(method='source_only', src='mnist', tgt='usps', steps=30, batch_size=16, log_every=5,\n"
        "                      checkpoint_every=10)\n"
        "dalib.run(cfg, sys.argv[1], progress_bar=False, on_step=stop)\n"
        "print('not reached')\n")
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "cut")], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == -signal.SIGUSR2, done.stderr
    assert done.stdout.strip() == f"own handler: [{int(signal.SIGUSR1)}]"  # the program's own, called; the run went on
    assert done.stderr.strip().endswith(
        "dalib: terminated by SIGUSR2 (the run is saved at step 7: resume=True continues it)"), done.stderr
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 7
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["checkpoint.pt", "metrics.jsonl"]  # claim given up


def test_sigterm_to_a_python_program_saves_the_step_then_ends_the_process_as_sigterm_does(tmp_path):
    """dalib.run from a program that leaves SIGTERM to its default (a scheduler's stop, a
    multiprocessing Pool's terminate): the process had died at once, without a checkpoint,
    its folder's claim left behind; it now saves the step first, then ends killed by SIGTERM,
    as the default ends it."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "job.py"
    script.write_text(
        "import os, signal, sys\n"
        "import dalib\n"
        "def stop(done, logs):\n"
        "    if done == 15:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "cfg = dalib.RunConfig(method='dann', src='mnist', tgt='usps', steps=30, batch_size=16, log_every=5,\n"
        "                      checkpoint_every=10, method_config={'hidden': 64})\n"
        "dalib.run(cfg, sys.argv[1], progress_bar=False, on_step=stop)\n"
        "print('not reached')\n")
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "cut")], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}, timeout=300)
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert "not reached" not in done.stdout
    assert done.stderr.strip().endswith("dalib: terminated (the run is saved at step 15: resume=True continues it)")
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 15  # not 10, the last regular one
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["checkpoint.pt", "metrics.jsonl"]  # claim given up
    full = run(_config(), tmp_path / "full", progress_bar=False)
    resumed = run(_config(), tmp_path / "cut", resume=True, progress_bar=False)
    assert (resumed.source_accuracy, resumed.target_accuracy) == (full.source_accuracy, full.target_accuracy)
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()


def test_ctrl_c_in_the_last_step_saves_the_trained_network_and_a_resume_scores_it(tmp_path):
    import signal

    def interrupt(done, logs):
        if done == 30:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt) as caught:
        run(_config(), tmp_path / "cut", progress_bar=False, on_step=interrupt)
    assert caught.value.saved_step == 30 and not (tmp_path / "cut" / "result.json").exists()
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 30
    full = run(_config(), tmp_path / "full", progress_bar=False)
    resumed = run(_config(), tmp_path / "cut", resume=True, progress_bar=False)
    assert resumed.target_accuracy == full.target_accuracy
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()


def test_a_second_ctrl_c_stops_a_step_at_once_and_leaves_the_last_checkpoint(tmp_path):
    import signal

    def interrupt(done, logs):
        if done == 15:
            os.kill(os.getpid(), signal.SIGINT)  # held to the step's end
            os.kill(os.getpid(), signal.SIGINT)  # at once: the step may not be over (here it is, unsaved)

    with pytest.raises(KeyboardInterrupt) as caught:
        run(_config(), tmp_path / "cut", progress_bar=False, on_step=interrupt)
    assert not hasattr(caught.value, "saved_step")
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 10
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_while_the_held_steps_checkpoint_is_written_still_says_it_is_saved(tmp_path, monkeypatch):
    """The write finishes before the second Ctrl-C is raised: the step is saved, and the stop
    says so (it had been a bare "interrupted", which sends the user to the last regular checkpoint)."""
    import signal

    from dalib import runner as runner_module

    original, armed = runner_module.torch.save, {"now": False}

    def save(obj, fh, *args, **kwargs):
        if armed["now"]:
            armed["now"] = False
            os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, while the step's checkpoint is written
        return original(obj, fh, *args, **kwargs)

    def interrupt(done, logs):
        if done == 15:
            os.kill(os.getpid(), signal.SIGINT)  # the first: held to this step's end
            armed["now"] = True

    monkeypatch.setattr(runner_module.torch, "save", save)
    with pytest.raises(KeyboardInterrupt) as caught:
        run(_config(), tmp_path / "cut", progress_bar=False, on_step=interrupt)
    assert caught.value.saved_step == 15 and load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 15


_LAZY_PLUGIN = '''
import torch
from torch.utils.data import Dataset

from dalib.data.domain import Domain
from dalib.data.registry import DatasetInfo, register_dataset


class Lazy(Dataset):  # decoded as it is read: the loader's workers get the dataset itself
    def __init__(self, n, shift):
        self.n, self.shift = n, shift
        self.targets = [i % 2 for i in range(n)]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        noise = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(i))
        return noise + self.shift * (i % 2), i % 2


def load(request):
    return Domain(name=request.domain, dataset=Lazy(24, 0.5 if request.domain == "a" else 0.3), num_classes=2,
                  input_shape=(1, 8, 8), classes=["c0", "c1"], origin="a plugin file")


register_dataset(DatasetInfo(name="lazy", description="decoded as it is read", domains=("a", "b"), kind="image",
                             num_classes=2, needs="embedded"), load)
'''


def test_loader_workers_started_by_spawn_load_a_dataset_from_a_plugin_file(tmp_path):
    """Under spawn (macOS's default start method; forkserver, Linux's from Python 3.14, alike) a
    loader worker unpickles the dataset, and a class from a --plugin file lives in a module whose
    name is made up: the worker died (No module named 'dalib_user_plugin_...'), and the run with
    it, in a traceback. The worker now loads the plugin files first: the run, and `dalib eval`'s
    predictions, are those of fork's workers."""
    import multiprocessing
    import subprocess
    import sys

    plugin = tmp_path / "lazy_data.py"
    plugin.write_text(_LAZY_PLUGIN)
    driver = tmp_path / "driver.py"
    driver.write_text("import multiprocessing, sys\n"
                      "if __name__ == '__main__':\n"
                      "    multiprocessing.set_start_method(sys.argv.pop(1), force=True)\n"
                      "    from dalib.cli import main\n"
                      "    sys.argv[0] = 'dalib'\n"
                      "    main()\n")
    args = ["--plugin", str(plugin), "--dataset", "lazy", "--src", "a", "--tgt", "b", "--steps", "3", "--batch-size",
            "8", "--workers", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for how in ("spawn", "fork"):
        for command in (["run", "source_only", *args, "--out", str(tmp_path / how)],
                        ["eval", str(tmp_path / how), "--plugin", str(plugin), "--workers", "1", "--predictions",
                         str(tmp_path / f"{how}.csv")]):
            done = subprocess.run([sys.executable, str(driver), how, *command], capture_output=True, text=True,
                                  env=env, timeout=300, cwd=tmp_path)
            assert done.returncode == 0, done.stderr[-3000:]
            assert "Traceback" not in done.stderr
    from dalib.registry import load_plugin_module
    from dalib.runner import _loader, _WithPluginFiles

    load_plugin_module(str(plugin))  # under fork nothing is pickled: the loader keeps the dataset itself
    lazy = next(cls for name, cls in sys.modules.items() for cls in [getattr(sys.modules[name], "Lazy", None)]
                if name.startswith("dalib_user_plugin_lazy_data") and cls is not None)(4, 0.5)
    assert _loader(lazy, batch_size=2, num_workers=1).dataset is lazy
    spawning = multiprocessing.get_context("spawn")
    assert isinstance(_loader(lazy, batch_size=2, num_workers=1, multiprocessing_context=spawning).dataset,
                      _WithPluginFiles)
    spawned, forked = (json.loads((tmp_path / how / "result.json").read_text()) for how in ("spawn", "fork"))
    for result in (spawned, forked):
        del result["seconds"]
    assert spawned == forked
    assert (tmp_path / "spawn.csv").read_text() == (tmp_path / "fork.csv").read_text()
