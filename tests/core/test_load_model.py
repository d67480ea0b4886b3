"""A deep run's network back from its folder: ``dalib.load_model`` and ``dalib eval``."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import dalib
from dalib.cli import cli
from dalib.data import load_domain
from dalib.errors import CheckpointError, ConfigError
from dalib.runner import RunConfig, evaluate, load_checkpoint, run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "dann"
    run(RunConfig(method="dann", src="mnist", tgt="usps", steps=30, batch_size=16, method_config={"hidden": 32}),
        out, progress_bar=False)
    return out


def test_the_loaded_network_scores_what_the_run_reported(trained):
    result = json.loads((trained / "result.json").read_text())
    model = dalib.load_model(trained)
    assert not model.training and model.step == 30
    assert model.classes == load_domain("digits", "usps").classes and len(model.classes) == 10
    cpu = torch.device("cpu")
    assert evaluate(model, load_domain("digits", "usps"), cpu) == result["target_accuracy"]
    assert evaluate(model, load_domain("digits", "mnist"), cpu) == result["source_accuracy"]
    assert not model.training  # scoring leaves the caller's eval mode as it found it ...
    model.train()
    evaluate(model, load_domain("digits", "usps"), cpu)
    assert model.training  # ... and a training model training
    model.eval()
    assert next(dalib.load_model(trained, device=torch.device("cpu")).parameters()).device == cpu
    with pytest.raises(ConfigError, match="^device must be a string"):
        dalib.load_model(trained, device=None)
    # the checkpoint file itself does as well as its folder, and holds the same weights
    again = dalib.load_model(trained / "checkpoint.pt")
    saved = load_checkpoint(trained / "checkpoint.pt")["model"]
    for key, value in again.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_eval_scores_the_target_by_default_and_any_domain_on_request(trained):
    result = json.loads((trained / "result.json").read_text())
    res = CliRunner().invoke(cli, ["eval", str(trained)])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == f"digits usps (1800 samples), the network of step 30: accuracy {result['target_accuracy']:.2f}%"
    res = CliRunner().invoke(cli, ["eval", str(trained), "--domain", "M"])
    assert f"digits mnist (2000 samples)" in res.stdout and f"{result['source_accuracy']:.2f}%" in res.stdout


def _one_line(res, fragment):
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], res.stderr


def test_eval_errors_are_one_line(trained, tmp_path, data_root):
    runner = CliRunner()
    _one_line(runner.invoke(cli, ["eval", str(tmp_path / "nothing")]), "no run at")
    _one_line(runner.invoke(cli, ["eval", str(trained), "--domain", "venus"]), "unknown domain 'venus'")
    _one_line(runner.invoke(cli, ["eval", str(trained), "--dataset", "office-caltech-surf", "--domain", "amazon",
                                  "--data-root", str(data_root)]),
              "the run's network takes 10 classes of shape (1, 16, 16)")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    _one_line(runner.invoke(cli, ["eval", str(tmp_path / "corrupt")]), "checkpoint.pt is not a dalib checkpoint, or a damaged one")
    # a file that is no checkpoint at all is named, never called one to delete
    res = runner.invoke(cli, ["eval", str(trained / "metrics.jsonl")])
    _one_line(res, "metrics.jsonl is not a dalib checkpoint, or a damaged one (UnpicklingError: not a file of tensors")
    assert "delete" not in res.stderr and (trained / "metrics.jsonl").exists()
    # a file pickle.dump wrote: one line, without torch's warning about its pickle protocol
    # (which asked the user to file an issue with torch)
    import pickle

    (tmp_path / "pickled").mkdir()
    with open(tmp_path / "pickled" / "checkpoint.pt", "wb") as fh:
        pickle.dump(object, fh, protocol=4)
    _one_line(runner.invoke(cli, ["eval", str(tmp_path / "pickled")]),
              "not a file of tensors that torch.save wrote and torch loads safely")


def test_runs_without_a_network_description_are_refused_clearly(trained, tmp_path, toy_dataset):
    old = load_checkpoint(trained / "checkpoint.pt")
    del old["model_spec"]  # as written by dalib before it described the network
    (tmp_path / "old").mkdir()
    torch.save(old, tmp_path / "old" / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="does not describe its network"):
        dalib.load_model(tmp_path / "old")
    shallow = tmp_path / "shallow"
    run(RunConfig(method="source_only", dataset=toy_dataset, src="src", tgt="tgt", mode="shallow"), shallow,
        progress_bar=False)
    with pytest.raises(CheckpointError, match="a shallow run keeps only its result"):
        dalib.load_model(shallow)


def test_eval_finds_the_runs_own_data_from_anywhere(tmp_path, data_root, monkeypatch):
    out = tmp_path / "office"
    run(RunConfig(method="source_only", dataset="office-caltech-surf", src="amazon", tgt="webcam", mode="deep",
                  steps=3, batch_size=16, data_root=str(data_root)), out, progress_bar=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # ../shared/data is not beside this folder
    monkeypatch.delenv("DALIB_DATA_ROOT", raising=False)
    res = CliRunner().invoke(cli, ["eval", str(out)])
    assert res.exit_code == 0, res.output
    accuracy = json.loads((out / "result.json").read_text())["target_accuracy"]
    assert res.stdout.strip().endswith(f"accuracy {accuracy:.2f}%") and "webcam (295 samples)" in res.stdout


@pytest.mark.parametrize("mode", ["deep", "shallow"])
def test_a_run_records_the_data_root_it_found_and_eval_reads_that_one(tmp_path, data_root, monkeypatch, mode):
    """A run on the default data root ($DALIB_DATA_ROOT, ./shared/data, ../shared/data) had
    recorded none: its result did not say which copy of the data it read, and dalib eval
    looked for the default again from where it ran, another copy or none ("no data root")."""
    monkeypatch.setenv("DALIB_DATA_ROOT", str(data_root))
    out = tmp_path / "found"
    run(RunConfig(method="coral", dataset="office-caltech-surf", src="amazon", tgt="webcam", mode=mode,
                  steps=3, batch_size=16), out, progress_bar=False)
    result = json.loads((out / "result.json").read_text())
    assert result["data_root"] == str(data_root.resolve()) and result["run_config"]["data_root"] is None
    if mode == "shallow":
        return  # (no network to evaluate)
    monkeypatch.delenv("DALIB_DATA_ROOT")
    monkeypatch.chdir(tmp_path)  # no shared/data here, nor beside it
    res = CliRunner().invoke(cli, ["eval", str(out)])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().endswith(f"accuracy {result['target_accuracy']:.2f}%")
    # an embedded dataset reads no root, and the result says so
    run(RunConfig(method="source_only", src="mnist", tgt="usps", steps=2, batch_size=16), tmp_path / "digits",
        progress_bar=False)
    assert json.loads((tmp_path / "digits" / "result.json").read_text())["data_root"] is None


def test_eval_finds_a_data_root_given_with_a_tilde_and_a_dataset_named_in_any_case(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("HOME", str(data_root.parent))
    out = tmp_path / "tilde"
    run(RunConfig(method="source_only", dataset="Office-Caltech-SURF", src="amazon", tgt="webcam", mode="deep",
                  steps=3, batch_size=16, data_root=f"~/{data_root.name}"), out, progress_bar=False)
    result = json.loads((out / "result.json").read_text())
    assert result["dataset"] == "office-caltech-surf"  # as registered, not as typed
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DALIB_DATA_ROOT", raising=False)
    res = CliRunner().invoke(cli, ["eval", str(out)])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().endswith(f"accuracy {result['target_accuracy']:.2f}%")


def test_an_output_folder_given_with_a_tilde_is_the_one_load_model_reads(tmp_path, data_root, monkeypatch):
    # the API expands ``~`` in its output folder as load_model and dalib eval do (it wrote a folder
    # literally named ``~`` in the working directory, which load_model("~/...") then did not find)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    deep = run(RunConfig(method="source_only", src="mnist", tgt="usps", steps=2, batch_size=16), "~/deep",
               progress_bar=False)
    assert deep.out_dir == tmp_path / "home" / "deep" and (tmp_path / "home" / "deep" / "result.json").exists()
    assert dalib.load_model("~/deep").step == 2
    shallow = run(RunConfig(method="coral", dataset="office-caltech-surf", src="amazon", tgt="webcam",
                            data_root=str(data_root)), "~/shallow", progress_bar=False)
    assert shallow.out_dir == tmp_path / "home" / "shallow" and (tmp_path / "home" / "shallow" / "result.json").exists()
    assert not (tmp_path / "~").exists()


def test_eval_takes_the_checkpoint_file_and_refuses_classes_named_otherwise(trained, tmp_path, monkeypatch):
    runner = CliRunner()
    res = runner.invoke(cli, ["eval", str(trained / "checkpoint.pt")])
    assert res.exit_code == 0 and "digits usps (1800 samples)" in res.stdout, res.output
    # the same input shape and class count, other class names: scoring would compare wrong logits
    checkpoint = load_checkpoint(trained / "checkpoint.pt")
    checkpoint["model_spec"]["classes"] = ["zero", *checkpoint["model_spec"]["classes"][1:]]
    torch.save(checkpoint, tmp_path / "renamed.pt")
    _one_line(runner.invoke(cli, ["eval", str(tmp_path / "renamed.pt")]), "domain usps has 1 class(es) the network does not know: 0 (it knows zero, 1")


def test_eval_loads_plugins_that_register_a_dataset(trained, tmp_path, monkeypatch):
    from dalib.data import registry as data_registry

    monkeypatch.setattr(data_registry, "_DATASETS", dict(data_registry._DATASETS))  # the plugin's dataset goes after
    plugin = tmp_path / "usps_again.py"
    plugin.write_text(
        "from dalib.data import DatasetInfo, get_dataset, list_datasets, register_dataset\n"
        "if 'digits-again' not in list_datasets():\n"
        "    info = get_dataset('digits')\n"
        "    register_dataset(DatasetInfo(name='digits-again', description='the digits again', domains=info.domains,\n"
        "                                 kind=info.kind, num_classes=10, needs='embedded'),\n"
        "                     lambda req: __import__('dalib.data', fromlist=['load_domain']).load_domain('digits', req.domain))\n"
    )
    res = CliRunner().invoke(cli, ["eval", str(trained), "--dataset", "digits-again", "--plugin", str(plugin)])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("digits-again usps (1800 samples)")


def test_eval_of_a_run_on_a_plugin_dataset_without_the_plugin_says_to_pass_it(trained, tmp_path):
    checkpoint = load_checkpoint(trained / "checkpoint.pt")
    checkpoint["model_spec"]["dataset"] = "sensors"  # registered by a plugin the eval does not load
    torch.save(checkpoint, tmp_path / "sensors.pt")
    _one_line(CliRunner().invoke(cli, ["eval", str(tmp_path / "sensors.pt")]),
              "unknown dataset 'sensors' (the run's): pass the --plugin MODULE that registers it")


def test_the_result_holds_the_trained_network_without_an_output_folder(toy_dataset):
    base = dict(dataset=toy_dataset, src="src", tgt="tgt", steps=20, batch_size=16)
    result = run(RunConfig(method="dann", mode="deep", method_config={"hidden": 16}, **base), None, progress_bar=False)
    assert result.mode == "deep" and result.out_dir is None and not result.model.training
    tgt = load_domain(toy_dataset, "tgt")
    with torch.no_grad():
        predicted = result.model(tgt.x).logits.argmax(1)
    assert 100.0 * float((predicted == tgt.y).double().mean()) == pytest.approx(result.target_accuracy)
    with torch.no_grad():  # a float64 array from numpy predicts the same (cast to the weights' float32)
        from_numpy = result.model(torch.from_numpy(tgt.x.numpy().astype("float64")))
        assert torch.equal(from_numpy.logits, result.model(tgt.x).logits)
    shallow = run(RunConfig(method="coral", mode="shallow", **base), None, progress_bar=False)
    assert shallow.mode == "shallow" and shallow.model is None


def test_the_path_options_the_shell_leaves_a_tilde_in_expand_it(tmp_path, monkeypatch):
    """`--opt=~/x` (and a quoted '~/x') reaches dalib with its ~: --data, --out and eval's RUN
    expanded it, --config, --plugin and --predictions looked for a folder named ~."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    (home / "cfg.toml").write_text("steps = 2\nbatch_size = 16\n")
    (home / "tilde_plugin_test.py").write_text(
        "import dalib\n@dalib.register_method('tilde_plugin_test')\nclass P(dalib.Method):\n    'Source only.'\n"
        "    def loss(self, batch, out, progress):\n        return {'total': self.source_loss(batch, out)}\n")
    try:
        res = CliRunner().invoke(cli, ["run", "tilde_plugin_test", "--src", "mnist", "--tgt", "usps", "--quiet",
                                       "--plugin=~/tilde_plugin_test.py", "--config=~/cfg.toml", "--out=~/run"])
        assert res.exit_code == 0, res.output
        assert json.loads((home / "run" / "result.json").read_text())["steps"] == 2  # (the config's)
        res = CliRunner().invoke(cli, ["eval", "~/run", "--plugin=~/tilde_plugin_test.py", "--predictions=~/p.csv"])
        assert res.exit_code == 0, res.output
        assert (home / "p.csv").read_text().startswith("index,") and not (tmp_path / "~").exists()
    finally:
        dalib.registry.unregister_method("tilde_plugin_test")
