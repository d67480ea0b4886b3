"""The CLI under abuse, from a review: every mistake is one line (exit 2), nothing written
before is lost, and a resume never passes off another run's result as this one's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from dalib.cli import cli


def _one_line(res, *fragments):
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def surf(data_root):
    return ["--dataset", "office-caltech-surf", "--data-root", str(data_root)]


def test_a_shallow_resume_checks_what_it_resumes(tmp_path, surf):
    runner = CliRunner()
    out = str(tmp_path / "coral")
    first = runner.invoke(cli, ["run", "coral", "--src", "amazon", "--tgt", "webcam", *surf, "--out", out])
    assert first.exit_code == 0, first.output
    same = runner.invoke(cli, ["run", "coral", "--src", "amazon", "--tgt", "webcam", *surf, "--out", out, "--resume"])
    assert same.exit_code == 0 and json.loads((tmp_path / "coral" / "result.json").read_text())["method"] == "coral"
    # what a shallow fit does not read, and its mode named, are the same run
    same = runner.invoke(cli, ["run", "coral", "--src", "amazon", "--tgt", "webcam", *surf, "--out", out, "--resume",
                               "--steps", "5", "--mode", "shallow"])
    assert same.exit_code == 0, same.output
    # another method, other domains: refused, where it used to report coral's A->W figures as its own
    _one_line(runner.invoke(cli, ["run", "source_only", "--src", "caltech", "--tgt", "dslr", *surf, "--out", out,
                                  "--resume"]), "other settings", 'method: "coral" there, "source_only" now')
    (tmp_path / "coral" / "result.json").write_text("[]")
    _one_line(runner.invoke(cli, ["run", "coral", "--src", "amazon", "--tgt", "webcam", *surf, "--out", out,
                                  "--resume"]), "is damaged: delete it")


def test_a_shallow_run_refuses_a_holdout_it_would_not_hold_out(tmp_path, surf):
    # it had fitted on every source sample and written holdout 0.1 in result.json, beside a
    # source accuracy on all of them (which a reader of the file took for the 90% trained on)
    out = tmp_path / "coral"
    import warnings

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        result = CliRunner().invoke(cli, ["run", "coral", "--src", "amazon", "--tgt", "webcam", *surf, "--holdout", "0.1",
                                          "--out", str(out)])
    assert not [w for w in said if "holdout" in str(w.message)]  # (not first told that the shallow form ignores it)
    _one_line(result, "--holdout holds source samples out of a network's training, and the shallow form of coral "
                      "fits on all of them: leave --holdout out, or train with --mode deep")
    assert not out.exists()


def test_a_deep_resume_names_the_settings_that_differ(tmp_path):
    runner = CliRunner()
    out = str(tmp_path / "d")
    assert runner.invoke(cli, ["run", "source_only", "--src", "M", "--tgt", "U", "--steps", "2", "--batch-size", "8",
                               "--out", out]).exit_code == 0
    # domains by what they name: "M" and "mnist" are the same domain, "usps" is another
    _one_line(runner.invoke(cli, ["run", "source_only", "--src", "usps", "--tgt", "M", "--steps", "2",
                                  "--batch-size", "8", "--out", out, "--resume"]),
              'src: "mnist" there, "usps" now', 'tgt: "usps" there, "mnist" now')
    # the backbone and the mode the run resolved, named, are the same run, as is a classifier it does not read
    with pytest.warns(UserWarning, match="classifier 'linear' is for the shallow form"):
        same = runner.invoke(cli, ["run", "source_only", "--src", "M", "--tgt", "U", "--steps", "2", "--batch-size",
                                   "8", "--out", out, "--resume", "--arch", "lenet", "--mode", "deep", "--classifier",
                                   "linear"])
    assert same.exit_code == 0, same.output
    _one_line(runner.invoke(cli, ["run", "source_only", "--src", "M", "--tgt", "U", "--steps", "2", "--batch-size",
                                  "8", "--out", out, "--resume", "--arch", "mlp"]), 'arch: "lenet" there, "mlp" now')
    # the batch size changes the numbers: not the same run (device and workers do not)
    _one_line(runner.invoke(cli, ["run", "source_only", "--src", "M", "--tgt", "U", "--steps", "2", "--batch-size",
                                  "16", "--out", out, "--resume"]), "batch_size: 8 there, 16 now")


def test_a_resume_compares_the_hyperparameters_not_how_they_were_written(tmp_path):
    runner = CliRunner()
    out = tmp_path / "d"
    args = ["run", "dann", "--src", "M", "--tgt", "U", "--steps", "4", "--batch-size", "8", "--set", "hidden=16",
            "--checkpoint-every", "2", "--out", str(out)]
    assert runner.invoke(cli, args).exit_code == 0
    (out / "result.json").unlink()  # as if killed after its last checkpoint
    # trade_off's default is 1.0: naming it, as "1", is the same run
    res = runner.invoke(cli, [*args, "--set", "trade_off=1", "--resume"])
    assert res.exit_code == 0, res.output
    (out / "result.json").unlink()
    _one_line(runner.invoke(cli, [*args, "--set", "trade_off=2", "--resume"]), "method_config:", '"trade_off": "2"')


def _finished_run(tmp_path):
    """A 2-step source_only run in tmp_path/d: the runner, the folder and the command's arguments."""
    runner = CliRunner()
    out = tmp_path / "d"
    args = ["run", "source_only", "--src", "M", "--tgt", "U", "--steps", "2", "--batch-size", "8", "--out", str(out)]
    assert runner.invoke(cli, args).exit_code == 0
    return runner, out, args


def test_a_finished_run_without_its_checkpoint_is_not_sent_back_and_forth(tmp_path):
    runner, out, args = _finished_run(tmp_path)
    (out / "checkpoint.pt").unlink()
    _one_line(runner.invoke(cli, args), "already holds a run")
    _one_line(runner.invoke(cli, [*args, "--resume"]), "finished (result.json) and its checkpoint.pt is gone; choose "
                                                       "another --out")


@pytest.mark.parametrize("damage", ['{"method": "source_only", "sour', "", "[1, 2]"])
def test_a_finished_run_whose_result_is_damaged_writes_it_again_on_resume(tmp_path, damage):
    """A truncated or edited result.json of a finished deep run is written again from its final
    checkpoint, as a missing one is (the resume said it had finished and left it broken)."""
    runner, out, args = _finished_run(tmp_path)
    whole = json.loads((out / "result.json").read_text())
    (out / "result.json").write_text(damage)
    res = runner.invoke(cli, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    again = json.loads((out / "result.json").read_text())
    assert (again["source_accuracy"], again["target_accuracy"]) == (whole["source_accuracy"], whole["target_accuracy"])


def _checkpointed_run(tmp_path):
    """A 4-step source_only run in tmp_path/d with checkpoints, its result.json removed (as if
    killed after its last checkpoint): the runner, the folder and the command's arguments."""
    runner = CliRunner()
    out = tmp_path / "d"
    args = ["run", "source_only", "--src", "M", "--tgt", "U", "--steps", "4", "--batch-size", "8",
            "--checkpoint-every", "2", "--out", str(out)]
    assert runner.invoke(cli, args).exit_code == 0
    (out / "result.json").unlink()
    return runner, out, args


@pytest.mark.parametrize("eval_every", ["0", "2"])
def test_a_finished_run_resumed_for_its_lost_result_writes_its_last_metrics_line_once(tmp_path, eval_every):
    runner, out = CliRunner(), tmp_path / "e"
    args = ["run", "source_only", "--src", "M", "--tgt", "U", "--steps", "2", "--batch-size", "8",
            "--eval-every", eval_every, "--out", str(out)]
    assert runner.invoke(cli, args).exit_code == 0
    whole = (out / "metrics.jsonl").read_text()
    (out / "result.json").unlink()
    res = runner.invoke(cli, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    assert (out / "metrics.jsonl").read_text() == whole  # (its last line had come twice)


def test_damaged_files_in_a_run_folder(tmp_path):
    runner, out, args = _checkpointed_run(tmp_path)
    with open(out / "metrics.jsonl", "a") as fh:  # lines that are JSON but no log line, and bytes that are no text
        fh.write("5\n[1, 2]\n")
    with open(out / "metrics.jsonl", "ab") as fh:
        fh.write(b"\xff\xfe\n")
    assert runner.invoke(cli, [*args, "--resume"]).exit_code == 0
    (out / "result.json").unlink()
    (out / "checkpoint.pt").write_text("not a checkpoint")
    _one_line(runner.invoke(cli, [*args, "--resume"]), "corrupt checkpoint", "delete it and run again without --resume")


def test_files_this_user_cannot_read_are_named_so_not_called_damaged(tmp_path, monkeypatch, surf):
    """A checkpoint or result.json that is unreadable here (its permissions) had been "corrupt:
    delete it", advice that destroys a good file; played by reads that fail as chmod 000 makes
    them (as root, chmod would not stop us)."""
    import pathlib

    import torch

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    runner, out, args = _checkpointed_run(tmp_path)
    before = (out / "checkpoint.pt").read_bytes()
    with monkeypatch.context() as m:
        m.setattr(torch, "load", refuse)
        _one_line(runner.invoke(cli, [*args, "--resume"]), f"cannot read the checkpoint {out / 'checkpoint.pt'}: "
                                                             "Permission denied")
    assert (out / "checkpoint.pt").read_bytes() == before
    shallow = ["run", "coral", "--src", "amazon", "--tgt", "webcam", *surf, "--out", str(tmp_path / "s")]
    assert runner.invoke(cli, shallow).exit_code == 0
    real = pathlib.Path.read_text
    monkeypatch.setattr(pathlib.Path, "read_text", lambda self, *a, **k: refuse() if self.name == "result.json"
                        else real(self, *a, **k))
    _one_line(runner.invoke(cli, [*shallow, "--resume"]), f"cannot read {tmp_path / 's' / 'result.json'}: "
                                                          "Permission denied")


def test_an_unwritable_output_folder_fails_before_the_work(tmp_path, monkeypatch, surf):
    import dalib.runner

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(dalib.runner.tempfile, "mkstemp", refuse)  # (as root, chmod would not stop us)
    runner = CliRunner()
    _one_line(runner.invoke(cli, ["run", "coral", "--src", "amazon", "--tgt", "webcam", *surf,
                                  "--out", str(tmp_path / "ro")]), "cannot write to output folder", "Permission denied")
    _one_line(runner.invoke(cli, ["run", "source_only", "--src", "M", "--tgt", "U", "--steps", "2",
                                  "--out", str(tmp_path / "ro2")]), "cannot write to output folder")
    _one_line(runner.invoke(cli, ["bench", "digits", "--out", str(tmp_path / "ro3"), "--quiet"]),
              "cannot write to output folder")


def test_a_failed_run_leaves_no_empty_folder(tmp_path):
    out = tmp_path / "never"
    _one_line(CliRunner().invoke(cli, ["run", "finetune", "--src", "M", "--tgt", "U", "--steps", "2",
                                       "--set", "policy=cut:9", "--out", str(out)]), "cannot cut 9")
    assert not out.exists()


@pytest.mark.parametrize("option,value,fragment", [
    ("--seed", str(2**32), "seed must be below 2**32"),  # (torch's generator would make it seed 0)
    ("--lr", "1e39", "lr must be a float32 number"),
    ("--image-size", "100000", "image_size must be at most 4096"),
])
def test_numbers_out_of_range(option, value, fragment):
    _one_line(CliRunner().invoke(cli, ["run", "dann", "--src", "M", "--tgt", "U", option, value]), fragment)


def test_a_method_key_in_a_config_file(tmp_path):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('method = "dann"\nsteps = 2\n')
    _one_line(CliRunner().invoke(cli, ["run", "dann", "--src", "M", "--tgt", "U", "--config", str(cfg)]),
              "must be a [method] table")


def test_empty_bench_lists(tmp_path):
    _one_line(CliRunner().invoke(cli, ["bench", "digits", "--methods", "", "--out", str(tmp_path)]),
              "--methods names none")


def test_ctrl_c_is_one_line(monkeypatch):
    import dalib.runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dalib.runner, "run", interrupted)
    res = CliRunner().invoke(cli, ["run", "dann", "--src", "M", "--tgt", "U"])
    assert res.exit_code == 130 and res.stderr == "dalib: interrupted\n", repr(res.stderr)


def test_a_checkpoint_missing_parts_or_holding_another_network(tmp_path):
    import torch

    runner, out, args = _finished_run(tmp_path)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    (out / "result.json").unlink()
    torch.save({k: v for k, v in ckpt.items() if k != "optimizer"}, out / "checkpoint.pt")
    _one_line(runner.invoke(cli, [*args, "--resume"]), "lacks what a resume needs (optimizer)")
    ckpt["model"] = {k: v[:1] if v.dim() else v for k, v in ckpt["model"].items()}  # other shapes
    torch.save(ckpt, out / "checkpoint.pt")
    _one_line(runner.invoke(cli, ["eval", str(out)]), "do not fit this network")
    _one_line(runner.invoke(cli, [*args, "--resume"]), "do not fit this network")


def test_a_checkpoint_whose_optimizer_or_random_state_is_damaged_is_one_line(tmp_path):
    import torch

    runner, out, args = _finished_run(tmp_path)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    (out / "result.json").unlink()
    fewer = {**ckpt, "optimizer": {**ckpt["optimizer"], "param_groups": ckpt["optimizer"]["param_groups"][:-1]}}
    torch.save(fewer, out / "checkpoint.pt")  # as after param_groups() changed between the kill and the resume
    _one_line(runner.invoke(cli, [*args, "--resume"]), "the optimizer state in", "does not fit this run",
              "param_groups() changed since")
    torch.save({**ckpt, "optimizer": {"param_groups": ckpt["optimizer"]["param_groups"]}}, out / "checkpoint.pt")
    _one_line(runner.invoke(cli, [*args, "--resume"]), "the optimizer state in", "does not fit this run")
    torch.save({**ckpt, "rng": {"torch": ckpt["rng"]["torch"][:10]}}, out / "checkpoint.pt")
    _one_line(runner.invoke(cli, [*args, "--resume"]), "lacks what a resume needs (its random state)")
    torch.save({k: v for k, v in ckpt.items() if k != "seconds"}, out / "checkpoint.pt")
    _one_line(runner.invoke(cli, [*args, "--resume"]), "lacks what a resume needs (its time so far)")
    # an older dalib's checkpoint, which eval refuses: a resume had gone on from it as if this dalib's
    torch.save({k: v for k, v in ckpt.items() if k != "model_spec"}, out / "checkpoint.pt")
    _one_line(runner.invoke(cli, ["eval", str(out)]), "does not describe its network (written by an older dalib)")
    _one_line(runner.invoke(cli, [*args, "--resume"]), "lacks what a resume needs (the description of its network, "
                                                       "which an older dalib did not write): delete it")


def test_a_resume_into_a_folder_a_run_still_writes_names_that_run(tmp_path):
    import fcntl
    import os

    out = tmp_path / "busy"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 50}\n')  # a live run before its first checkpoint
    (out / ".dalib-run.lock").write_text(str(os.getppid()))
    with open(out / ".dalib-run.lock") as held:  # its claim: under a flock (of another open file: another run's)
        fcntl.flock(held, fcntl.LOCK_EX)
        args = ["run", "source_only", "--src", "M", "--tgt", "U", "--steps", "2", "--out", str(out), "--resume"]
        _one_line(CliRunner().invoke(cli, args), "is being written by another dalib run", f"(process {os.getppid()}):")
        assert (out / ".dalib-run.lock").read_text() == str(os.getppid())  # its claim stays


def test_a_shallow_resume_into_a_folder_a_fresh_run_still_writes_names_that_run(tmp_path, data_root):
    """It said "nothing to resume: no result.json", which sends one to start afresh (refused
    in turn as being written), where the deep form names the run that writes there."""
    import fcntl
    import os

    out = tmp_path / "busy"
    out.mkdir()
    (out / ".dalib-run.lock").write_text(str(os.getppid()))  # a live run's claim, under its flock
    args = ["run", "coral", "--dataset", "office-caltech-surf", "--src", "A", "--tgt", "W", "--data-root",
            str(data_root), "--out", str(out), "--resume"]
    with open(out / ".dalib-run.lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        _one_line(CliRunner().invoke(cli, args), f"is being written by another dalib run (process {os.getppid()})")
    (out / ".dalib-run.lock").unlink()
    _one_line(CliRunner().invoke(cli, args), "nothing to resume: no result.json")


def test_a_temporary_file_left_by_a_killed_writer_is_removed(tmp_path):
    import os
    import subprocess
    import sys

    runner, out, args = _finished_run(tmp_path)
    (out / "result.json").unlink()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = out / f".checkpoint.pt.dalib-tmp{int(dead.stdout)}"  # the pid of a process that has exited
    stale.write_text("half a file")
    live = out / f".result.json.dalib-tmp{os.getppid()}"  # a writer still at work (a living process) is left alone
    live.write_text("being written")
    theirs = out / f".notes.tmp{int(dead.stdout)}"  # another program's file of a like name is not dalib's to remove
    theirs.write_text("my notes")
    assert runner.invoke(cli, [*args, "--resume"]).exit_code == 0
    assert not stale.exists() and live.exists() and theirs.read_text() == "my notes"
    assert json.loads((out / "result.json").read_text())["steps"] == 2


def test_a_long_load_error_is_cut_at_its_first_sentence_not_mid_word():
    from dalib.errors import load_failure

    long = ("PytorchStreamReader failed reading zip archive: failed finding central directory. This is an internal "
            "miniz error. If you are seeing this error, there is a high likelihood that your checkpoint file is "
            "corrupted. This can happen if the checkpoint was not saved properly.")
    assert load_failure(RuntimeError(long)) == (
        "RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory")
    words = " ".join(["word"] * 80)  # no sentence end within 200 characters
    assert load_failure(ValueError(words)) == "ValueError: " + " ".join(["word"] * 40) + " ..."


def test_the_command_line_imports_torch_inside_its_interrupt_handler():
    """``import dalib`` had imported torch (about 1.5 s) before the command's handler existed:
    Ctrl-C then printed a traceback of torch's import. The package's names are now imported
    at first use, so the console script's own import leaves torch to the command."""
    import subprocess
    import sys

    code = ("import sys, dalib, dalib.cli; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert dalib.run.__module__ == 'dalib.runner' and 'torch' in sys.modules; "
            "from dalib import Method, param; print(sorted(dalib.__all__)[:3], 'run' in dir(dalib))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['Adapted', 'Batch', 'Context'] True"


def test_a_path_the_file_system_refuses_is_one_line(tmp_path):
    """A name over 255 bytes (NAME_MAX) had given an OSError traceback in run, eval and select."""
    runner, long = CliRunner(), str(tmp_path / ("b" * 256))
    _one_line(runner.invoke(cli, ["run", "dann", "--src", "M", "--tgt", "U", "--steps", "2", "--out", long]),
              f"File name too long: {long}")
    _one_line(runner.invoke(cli, ["eval", long]), "File name too long")
    assert list(tmp_path.iterdir()) == []


def test_an_output_path_that_cannot_be_a_folder_says_why(tmp_path):
    """A path under a file and a loop of links had read "holds a metrics.jsonl that no dalib run
    wrote"; a link to a folder that does not exist, "File exists"."""
    (tmp_path / "afile").touch()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    runner = CliRunner()
    for out, said in (("afile/sub", "cannot use {} as a run folder: Not a directory"),
                      ("loop", "cannot use {} as a run folder: Too many levels of symbolic links"),
                      ("dangling", "cannot create output folder {}: it is a symbolic link to {}, which does not exist")):
        path = tmp_path / out
        _one_line(runner.invoke(cli, ["run", "dann", "--src", "M", "--tgt", "U", "--steps", "2", "--out", str(path)]),
                  said.format(path, tmp_path / "nowhere"))
    assert not (tmp_path / "nowhere").exists()


def test_a_link_planted_as_the_lock_or_a_temporary_file_is_never_followed(tmp_path):
    import os

    from dalib.errors import DalibError
    from dalib.runner import _temporary_name, atomic_write_text, claim_file

    # in a folder others can write to, a link named like the run's lock had the run empty the
    # file it points to (and write its process id there)
    victim = tmp_path / "victim.txt"
    victim.write_text("important")
    out = tmp_path / "shared"
    out.mkdir()
    (out / ".dalib-run.lock").symlink_to(victim)
    result = CliRunner().invoke(cli, ["run", "source_only", "--src", "M", "--tgt", "U", "--steps", "2",
                                      "--out", str(out)])
    _one_line(result, f"cannot claim {out / '.dalib-run.lock'}: it is a symbolic link, which dalib does not follow")
    assert victim.read_text() == "important"
    # a link planted under the temporary name of an atomic write (its process id foretold) is
    # replaced, not written through
    target = tmp_path / "result.json"
    (tmp_path / _temporary_name("result.json")).symlink_to(victim)
    atomic_write_text(target, "{}")
    assert victim.read_text() == "important" and target.read_text() == "{}" and not target.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json", "shared", "victim.txt"]
    # a lock that is no regular file (a fifo) is refused, not waited on
    os.mkfifo(tmp_path / "fifo-out.lock")
    with pytest.raises(DalibError, match="it is not a regular file"):
        claim_file(tmp_path / "fifo-out.lock", "busy", "or not")


@pytest.mark.parametrize(("signame", "status", "said"), [("SIGTERM", 143, "terminated"),
                                                       ("SIGUSR1", 138, "terminated by SIGUSR1")])
def test_sigterm_stops_a_run_as_ctrl_c_does_and_exits_143(tmp_path, signame, status, said):
    # a scheduler's stop (SLURM sends SIGTERM, then SIGKILL after a grace period), or its warning
    # (--signal=USR1@60): the run had died at once, silent, its claim on the folder left behind
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    out = tmp_path / "run"
    args = [sys.executable, "-m", "dalib", "run", "source_only", "--src", "M", "--tgt", "U", "--steps", "100000",
            "--checkpoint-every", "5", "--out", str(out)]
    with open(tmp_path / "stderr", "w") as log:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, cwd=tmp_path,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            deadline = time.monotonic() + 240
            while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert (out / "checkpoint.pt").exists(), (tmp_path / "stderr").read_text()
            proc.send_signal(getattr(signal, signame))
            proc.wait(timeout=60)
        finally:
            proc.kill()
            proc.wait()
    stderr = (tmp_path / "stderr").read_text()
    last = stderr.strip().splitlines()[-1]
    saved = re.fullmatch(rf"dalib: {said} \(the run is saved at step (\d+): --resume continues it\)", last)
    assert proc.returncode == status and saved, stderr
    assert not (out / ".dalib-run.lock").exists()  # the claim released, as after Ctrl-C
    # the step it stopped at, saved (not the last of the regular checkpoints, every 5 steps)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == int(saved.group(1))
    assert not [p.name for p in out.iterdir() if "dalib-tmp" in p.name]


def test_a_run_with_stderr_closed_trains_and_writes_its_results(tmp_path):
    # (2>&-): Python's sys.stderr is None, and reading whether it was a terminal failed the run
    # with a traceback nobody saw, exit 1; a bad input exited 1, not 2
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    args = [sys.executable, "-m", "dalib", "run", "source_only", "--src", "M", "--tgt", "U", "--steps", "2", "--out"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*args, str(out)], stdout=subprocess.PIPE, preexec_fn=lambda: os.close(2), env=env, timeout=300)
    assert done.returncode == 0 and b"target accuracy" in done.stdout
    assert json.loads((out / "result.json").read_text())["steps"] == 2
    bad = subprocess.run([*args, str(tmp_path / "bad"), "--batch-size", "0"], stdout=subprocess.PIPE,
                         preexec_fn=lambda: os.close(2), env=env, timeout=300)
    assert bad.returncode == 2


def test_dalib_alone_prints_its_help_on_stderr_with_status_2():
    # the help had been cut to its first line ("dalib: error: Usage: dalib [OPTIONS] COMMAND ...")
    res = CliRunner().invoke(cli, [], prog_name="dalib")
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.startswith("Usage: dalib [OPTIONS] COMMAND [ARGS]...")
    assert all(f"  {name} " in res.stderr for name in ("run", "list", "show", "eval", "bench", "select"))


def _dalib(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "dalib", *args], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=300, **kwargs)


def test_a_closed_pipe_ends_a_command_with_status_141_and_no_word():
    # (`dalib list | head -1`): click's exit 1, a crash's status, had told a pipefail script nothing
    for args in (["list"], ["show", "dann"], ["--help"], ["--version"], ["run", "--help"]):
        read, write = os.pipe()
        os.close(read)  # the reader gone before a line is written: every write fails
        try:
            done = _dalib(*args, stdout=write, stderr=subprocess.PIPE)
        finally:
            os.close(write)
        assert done.returncode == 141 and done.stderr == b"", (args, done.returncode, done.stderr)


def test_a_log_reader_that_goes_away_ends_the_lines_not_the_run(tmp_path):
    # stderr a pipe whose reader closed (`dalib run ... 2>&1 | head -2`): the first progress line
    # had stopped the training, and a run shorter than --checkpoint-every left nothing
    read, write = os.pipe()
    os.close(read)
    try:
        done = _dalib("run", "source_only", "--src", "M", "--tgt", "U", "--steps", "20", "--out", str(tmp_path / "run"),
                      stdout=subprocess.PIPE, stderr=write)
    finally:
        os.close(write)
    assert done.returncode == 0 and b"target accuracy" in done.stdout, done
    assert json.loads((tmp_path / "run" / "result.json").read_text())["steps"] == 20


def test_help_on_a_full_disk_is_one_line_not_a_traceback():
    # --help and --version are printed while the arguments are read, before any command's handler
    with open("/dev/full", "w") as full:
        for flag in ("--help", "--version"):
            done = _dalib(flag, stdout=full, stderr=subprocess.PIPE, text=True)
            assert done.returncode == 2 and done.stderr == "dalib: error: No space left on device\n", done.stderr


def test_standard_streams_closed_at_start_get_the_null_device(tmp_path):
    """A process started with stdout and stderr closed (>&- 2>&-): the next files opened (a
    run's metrics.jsonl) took their numbers, and what a compiler or a C library wrote to
    standard output went into them."""
    script = ("import os, sys\n"
              "from dalib.cli import _open_standard_streams\n"
              "_open_standard_streams()\n"
              "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)\n"
              "os.write(1, b'to stdout'); os.write(2, b'to stderr')\n"
              "os.write(fd, str(fd).encode())\n")

    def closed():
        os.close(1)
        os.close(2)

    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "file")], preexec_fn=closed, timeout=120)
    assert done.returncode == 0
    assert int((tmp_path / "file").read_text()) > 2  # a number of its own, with nothing else in the file


def test_a_config_file_may_be_a_pipe(tmp_path):
    # (--config /dev/stdin, or <(...)): "config file not found: /dev/stdin", though it was there
    done = _dalib("run", "source_only", "--src", "M", "--tgt", "U", "--config", "/dev/stdin", "--out",
                  str(tmp_path / "run"), "--quiet", input="steps = 3\n", capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "run" / "result.json").read_text())["steps"] == 3
    done = _dalib("run", "source_only", "--src", "M", "--tgt", "U", "--config", str(tmp_path / "none.toml"),
                  capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr == f"dalib: error: config file not found: {tmp_path / 'none.toml'}\n"


def test_eval_predictions_to_standard_output(tmp_path):
    """`--predictions -` had written a file named "-" in the working folder."""
    import csv
    import io

    from dalib.runner import RunConfig, run

    run(RunConfig(method="source_only", src="mnist", tgt="usps", steps=3, batch_size=16), tmp_path / "run",
        progress_bar=False)
    to_file = CliRunner().invoke(cli, ["eval", str(tmp_path / "run"), "--predictions", str(tmp_path / "p.csv")])
    with CliRunner().isolated_filesystem(temp_dir=tmp_path) as here:
        res = CliRunner().invoke(cli, ["eval", str(tmp_path / "run"), "--predictions", "-"])
        assert os.listdir(here) == []
    assert res.exit_code == 0 and to_file.exit_code == 0, res.output
    assert res.stdout == (tmp_path / "p.csv").read_text()
    assert len(list(csv.DictReader(io.StringIO(res.stdout)))) == 1800
    assert res.stderr.strip().endswith("; predictions of 1800 samples on standard output")
    # what a plugin (or a dataset's loader) prints goes to stderr: it had been the CSV's first line
    noisy = tmp_path / "noisy.py"
    noisy.write_text('print("loading noisy")\n')
    res = CliRunner().invoke(cli, ["eval", str(tmp_path / "run"), "--predictions", "-", "--plugin", str(noisy)])
    assert res.exit_code == 0 and res.stdout == (tmp_path / "p.csv").read_text(), res.output
    assert res.stderr.startswith("loading noisy\n")


def test_a_metrics_file_that_is_a_link_or_a_pipe_is_refused_not_followed(tmp_path):
    """A run folder someone else prepared: a metrics.jsonl linked to a file of the user's had
    a resume copy its JSON lines (a line without a step counted as step 0) into the folder, and
    a dangling link had it create and write the file the link names; a pipe of that name hung
    a fresh run before it began."""
    import os

    args = ["run", "source_only", "--src", "M", "--tgt", "U", "--steps", "2", "--batch-size", "8"]
    runner, run_dir = CliRunner(), tmp_path / "run"
    assert runner.invoke(cli, [*args, "--out", str(run_dir)]).exit_code == 0
    (run_dir / "result.json").unlink()  # a resume has work left: the last result
    secret, created = tmp_path / "secret.jsonl", tmp_path / "created.txt"
    secret.write_text('{"token": "abc"}\n')
    metrics = run_dir / "metrics.jsonl"
    for target in (secret, created):
        metrics.unlink()
        metrics.symlink_to(target)
        _one_line(runner.invoke(cli, [*args, "--out", str(run_dir), "--resume"]),
                  f"{metrics} is a symbolic link, which dalib does not read or write through: remove it, or choose "
                  "another --out")
    assert secret.read_text() == '{"token": "abc"}\n' and not created.exists()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    os.mkfifo(fresh / "metrics.jsonl")
    _one_line(runner.invoke(cli, [*args, "--out", str(fresh)]),
              f"{fresh / 'metrics.jsonl'} is not a regular file (a pipe, a device), which dalib does not read or "
              "write through")
    # lines without a step are none of the run's: a resume keeps the run's own
    metrics.unlink()
    metrics.write_text('{"token": "abc"}\n{"step": 1, "lr": 0.01}\n')
    assert runner.invoke(cli, [*args, "--out", str(run_dir), "--resume"]).exit_code == 0
    assert "token" not in metrics.read_text() and metrics.read_text().startswith('{"step": 1')


def test_a_claim_the_disk_refuses_leaves_no_lock_and_a_kept_run_found_late_is_refused(tmp_path, monkeypatch):
    """A disk with room for an empty file but not for the process id: the bare OSError named no
    path, and the empty lock left behind read as a run that writes there, for ever. A kept run
    that appears while the claim is taken, and is gone again as the claim is given up, had let
    the run go on without a claim."""
    import errno

    from dalib import runner as runner_module
    from dalib.errors import ConfigError
    from dalib.runner import FolderTaken, check_fresh_out_dir, claim_file

    lock = tmp_path / ".lock"
    real_write = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(ConfigError, match=rf"^cannot claim {lock}: No space left on device$"):
        claim_file(lock, "busy", "or not")
    monkeypatch.setattr(os, "write", real_write)
    assert not lock.exists() and str(lock) not in runner_module._claims
    out = tmp_path / "out"
    claim, release = runner_module.claim_out_dir, runner_module.release_file

    def claimed_beside_a_result(folder):
        claim(folder)
        (folder / "result.json").write_text("{}")

    def released_and_removed(path):
        release(path)
        (out / "result.json").unlink()

    monkeypatch.setattr(runner_module, "claim_out_dir", claimed_beside_a_result)
    monkeypatch.setattr(runner_module, "release_file", released_and_removed)
    with pytest.raises(FolderTaken, match=rf"^{out} already holds a run"):
        check_fresh_out_dir(out)
    assert not any(key.startswith(str(out)) for key in runner_module._claims)


def test_a_system_without_posix_file_locks_is_one_line_before_anything_is_written(tmp_path, monkeypatch):
    """On Windows (no fcntl, no O_NOFOLLOW) every command that writes had ended in a traceback
    (ModuleNotFoundError, AttributeError) after loading its data; it is one line, status 2."""
    import os
    import sys

    trained = tmp_path / "trained"
    res = CliRunner().invoke(cli, ["run", "source_only", "--src", "M", "--tgt", "U", "--steps", "2", "--out",
                                   str(trained)])
    assert res.exit_code == 0, res.output
    said = ("dalib: error: dalib writes its files on Linux and macOS only (POSIX file locks, links not followed): on "
            "Windows, run it under WSL")
    for missing in ("O_NOFOLLOW", "fcntl"):
        with monkeypatch.context() as m:
            if missing == "fcntl":
                m.setitem(sys.modules, "fcntl", None)
            else:
                m.delattr(os, "O_NOFOLLOW")
            m.chdir(tmp_path)
            for args in (["run", "source_only", "--src", "M", "--tgt", "U", "--steps", "2", "--out", str(tmp_path / "r")],
                         ["run", "source_only", "--src", "M", "--tgt", "U", "--steps", "2"],
                         ["eval", str(trained), "--predictions", str(tmp_path / "p.csv")]):
                res = CliRunner().invoke(cli, args)
                assert res.exit_code == 2 and res.stderr.strip() == said, (missing, args, res.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trained"] or sorted(
        p.name for p in tmp_path.iterdir()) == ["runs", "trained"] and not any((tmp_path / "runs").iterdir())
