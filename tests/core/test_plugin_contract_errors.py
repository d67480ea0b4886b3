"""What the runner asks of a plugin, and what a plugin author gets when a method breaks it:
one line naming the method and the rule, before training when it can be known then, and
never a finished run lost to a value it cannot write."""

from __future__ import annotations

import collections
import json
import typing as tp
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from dalib import Method, param, register_method
from dalib.config import describe_config
from dalib.errors import DataError, PluginError, RegistryError
from dalib.registry import unregister_method
from dalib.runner import RunConfig, load_checkpoint, run
from tests._support.interrupt import killed_at


@pytest.fixture
def method_named():
    """Register test classes under names that are removed again after the test."""
    names = []

    def register(name, cls):
        names.append(name)
        return register_method(name)(cls)

    yield register
    for name in names:
        unregister_method(name)


def _config(dataset, method, **kw):
    base = dict(method=method, dataset=dataset, src="src", tgt="tgt", steps=12, batch_size=16, log_every=4,
                checkpoint_every=5)
    return RunConfig(**(base | kw))


_Bounds = collections.namedtuple("_Bounds", "low high")


class _Base(Method):
    """A test method: the source loss alone, unless a test's says otherwise."""

    @dataclass(frozen=True)
    class Config:
        pass

    def loss(self, batch, out, progress):
        return {"total": self.source_loss(batch, out)}


@pytest.mark.parametrize(
    "body, fragment",
    [
        (lambda self, b, o: self.source_loss(b, o), "must return a dict of scalar tensors with a 'total' entry, got a tensor"),
        (lambda self, b, o: {"cls": self.source_loss(b, o)}, "with a 'total' entry, got a dict with keys ['cls']"),
        (lambda self, b, o: {"total": o.logits_s.sum(1)}, "loss()['total'] must be a scalar tensor, got a tensor of shape (16,)"),
        (lambda self, b, o: {"total": self.source_loss(b, o).detach()}, "does not depend on any trained parameter"),
        (lambda self, b, o: {"total": self.source_loss(b, o), "log": "text"}, "loss()['log'] must be a scalar tensor, got a str"),
        (lambda self, b, o: {"total": self.source_loss(b, o).item()},
         "loss()['total'] must be a scalar tensor that the trained parameters reach, got a float (.item() gives up"),
        (lambda self, b, o: {"total": (o.logits_s.argmax(1) == b.y_s).sum()},
         "loss()['total'] is an integer tensor (int64): a loss is a floating-point tensor"),
    ],
)
def test_a_loss_that_breaks_the_contract_is_one_line(toy_dataset, method_named, tmp_path, body, fragment):
    cls = type("Broken", (_Base,), {"loss": lambda self, batch, out, progress: body(self, batch, out)})
    method_named("contract_broken", cls)
    with pytest.raises(PluginError, match="method 'contract_broken': ") as err:
        run(_config(toy_dataset, "contract_broken"), tmp_path / "r", progress_bar=False)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()  # the first step fails: nothing to resume or lose


def test_modules_made_after_init_or_a_total_that_trains_nothing_are_one_line(toy_dataset, method_named, tmp_path):
    """A discriminator built in prepare() (once the data is known) came after the optimizer, and
    one built in loss() is new at every step: neither trained, and the run reported success; so
    did a 'total' of a tensor of its own, which requires grad and reaches no parameter."""
    class InPrepare(_Base):
        def prepare(self, context):
            self.disc = nn.Linear(context.model.features_dim, 1)

        def loss(self, batch, out, progress):
            return {"total": self.source_loss(batch, out) + self.disc(out.feat_s).mean()}

    class InLoss(_Base):
        def loss(self, batch, out, progress):
            return {"total": nn.Linear(out.feat_s.shape[1], 1)(out.feat_s.detach()).mean()}

    class OwnTensor(_Base):
        def loss(self, batch, out, progress):
            return {"total": torch.tensor(1.0, requires_grad=True) * 2}

    class LeavesOut(_Base):  # freezing by leaving parameters out of param_groups, as documented: still fine
        def param_groups(self, model):
            return [{"params": [*model.bottleneck.parameters(), *model.head.parameters()]}]

    method_named("contract_leaves_out", LeavesOut)
    run(_config(toy_dataset, "contract_leaves_out"), tmp_path / "leaves_out", progress_bar=False)
    class AllFrozen(_Base):  # the model in a group of lr_mult 0, and nothing else: the loss is right, nothing moves
        def param_groups(self, model):
            return [{"params": list(model.parameters()), "lr_mult": 0.0}]

    for name, cls, fragment in (
            ("contract_all_frozen", AllFrozen, "every group of param_groups() has lr_mult 0, so nothing trains"),
            ("contract_in_prepare", InPrepare, "prepare() created parameters (self.disc.weight, self.disc.bias) after "
                                               "the optimizer was built, which would never train them"),
            ("contract_in_loss", InLoss, "loss()['total'] reaches no trained parameter"),
            ("contract_own_tensor", OwnTensor, "loss()['total'] reaches no trained parameter")):
        method_named(name, cls)
        with pytest.raises(PluginError, match=f"^method '{name}': ") as err:
            run(_config(toy_dataset, name), tmp_path / name, progress_bar=False)
        assert fragment in str(err.value) and "\n" not in str(err.value)


def test_an_init_without_super_is_one_line(toy_dataset, method_named, tmp_path):
    class NoSuper(_Base):
        def __init__(self, config, model):
            self.config = config  # (nn.Module's __init__, which super() runs, never ran)

    method_named("contract_no_super", NoSuper)
    with pytest.raises(PluginError, match=r"^method 'contract_no_super': its __init__ did not call "
                                          r"super\(\).__init__\(config, model\)$"):
        run(_config(toy_dataset, "contract_no_super"), tmp_path / "r", progress_bar=False)


def test_state_a_checkpoint_would_not_keep_is_warned_about(toy_dataset, method_named, tmp_path):
    """A plain attribute changed by training (an EMA kept as self.ema = 0.0) is lost on a resume,
    which then ends elsewhere than the uninterrupted run, without a word."""
    import warnings

    class Ema(_Base):
        def __init__(self, config, model):
            super().__init__(config, model)
            self.ema = 0.0
            self.scale = 2.0  # never changed: nothing to say

        def loss(self, batch, out, progress):
            cls = self.source_loss(batch, out)
            self.ema = 0.9 * self.ema + 0.1 * float(cls.detach())
            return {"total": cls * self.scale}

    class Buffered(Ema):
        def __init__(self, config, model):
            super().__init__(config, model)
            del self.ema
            self.register_buffer("ema", torch.zeros(()))

        def loss(self, batch, out, progress):
            cls = self.source_loss(batch, out)
            self.ema.mul_(0.9).add_(0.1 * cls.detach())
            return {"total": cls}

    method_named("contract_ema", Ema)
    with pytest.warns(RuntimeWarning, match=r"method 'contract_ema' changes self\.ema during training, which a "
                                            r"checkpoint does not keep .*self\.register_buffer\(\)") as caught:
        run(_config(toy_dataset, "contract_ema"), tmp_path / "ema", progress_bar=False)
    assert sum("contract_ema" in str(w.message) for w in caught) == 1  # once, not at every checkpoint

    class Lazy(_Base):  # state that starts as None, or in a list (a queue): the commonest kinds
        def __init__(self, config, model):
            super().__init__(config, model)
            self.center, self.queue = None, []

        def loss(self, batch, out, progress):
            cls = self.source_loss(batch, out)
            self.center = out.feat_s.detach().mean(0)
            self.queue.append(float(cls.detach()))
            return {"total": cls}

    method_named("contract_lazy", Lazy)
    with pytest.warns(RuntimeWarning, match=r"method 'contract_lazy' changes self\.(center|queue) during training"):
        run(_config(toy_dataset, "contract_lazy"), tmp_path / "lazy", progress_bar=False)

    class Quiet(Buffered):  # NaN that never changes, and a cache named private: nothing to say
        def __init__(self, config, model):
            super().__init__(config, model)
            self.sentinel, self.centroids = float("nan"), torch.full((3,), float("nan"))
            self.bounds = _Bounds(0.0, 1.0)  # a namedtuple (copying it as its own type had failed)

        def loss(self, batch, out, progress):
            self._last = out.feat_s.detach()
            self.diagnostics = {"steps_seen": progress.step}  # kept by checkpoints (kmm's refits had been warned about)
            return super().loss(batch, out, progress)

    method_named("contract_buffered", Quiet)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(_config(toy_dataset, "contract_buffered"), tmp_path / "buffered", progress_bar=False)

    class Kept(_Base):  # its own get_extra_state keeps its EMA: trusted
        def __init__(self, config, model):
            super().__init__(config, model)
            self.ema = 0.0

        def loss(self, batch, out, progress):
            cls = self.source_loss(batch, out)
            self.ema = 0.9 * self.ema + 0.1 * float(cls.detach())
            return {"total": cls}

        def get_extra_state(self):
            return {"ema": self.ema}

        def set_extra_state(self, state):
            self.ema = state["ema"]

    class Plain(Kept):  # inherits it: trusted too
        pass

    for name, cls in (("contract_kept", Kept), ("contract_plain", Plain)):
        method_named(name, cls)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            run(_config(toy_dataset, name), tmp_path / name, progress_bar=False)


def test_state_that_prepare_sets_and_a_checkpoint_would_not_keep_is_warned_about(toy_dataset, method_named, tmp_path):
    """Pseudo-labels set in prepare() (None in __init__) without get_extra_state: a resume skips
    prepare and found None, or a fallback, without a word (the snapshot was taken after prepare)."""
    import warnings

    class Pseudo(_Base):
        def __init__(self, config, model):
            super().__init__(config, model)
            self.pseudo = None

        def prepare(self, context):
            self.pseudo = context.embed("target", lambda x: context.model(x).logits).argmax(1).cpu()

        def loss(self, batch, out, progress):
            return {"total": self.source_loss(batch, out)}

    method_named("contract_pseudo", Pseudo)
    with pytest.warns(RuntimeWarning, match=r"^method 'contract_pseudo' sets self\.pseudo in prepare\(\), which a "
                                            r"checkpoint does not keep .*--resume skips prepare") as caught:
        run(_config(toy_dataset, "contract_pseudo"), tmp_path / "pseudo", progress_bar=False)
    assert sum("contract_pseudo" in str(w.message) for w in caught) == 1

    class Created(_Base):  # an attribute that prepare creates, not __init__
        def prepare(self, context):
            self.centroids = context.embed("source", lambda x: context.model(x).features).mean(0)

        def loss(self, batch, out, progress):
            return {"total": self.source_loss(batch, out)}

    method_named("contract_created", Created)
    with pytest.warns(RuntimeWarning, match=r"^method 'contract_created' sets self\.centroids in prepare\(\)"):
        run(_config(toy_dataset, "contract_created"), tmp_path / "created", progress_bar=False)

    class KeptPseudo(Pseudo):  # kept: nothing to say
        def get_extra_state(self):
            return {"pseudo": self.pseudo}

        def set_extra_state(self, state):
            self.pseudo = state["pseudo"]

    method_named("contract_kept_pseudo", KeptPseudo)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(_config(toy_dataset, "contract_kept_pseudo"), tmp_path / "kept", progress_bar=False)


def test_a_loss_that_is_nan_at_once_names_step_1(toy_dataset, method_named, tmp_path):
    """Steps count from 1, as metrics.jsonl and the checkpoints count them."""
    class Nan(_Base):
        def loss(self, batch, out, progress):
            return {"total": self.source_loss(batch, out) * float("nan")}

    method_named("contract_nan", Nan)
    with pytest.raises(DataError, match=r"^the loss became nan at step 1: "):
        run(_config(toy_dataset, "contract_nan"), tmp_path / "r", progress_bar=False)


def test_plain_numbers_may_be_logged_and_a_non_finite_one_is_valid_json(toy_dataset, method_named, tmp_path):
    class Logs(_Base):
        def loss(self, batch, out, progress):
            cls = self.source_loss(batch, out)
            return {"total": cls, "lr_scale": 0.5, "ratio": cls / 0.0 * 0.0}  # the last one is NaN

    method_named("contract_logs", Logs)
    run(_config(toy_dataset, "contract_logs"), tmp_path / "r", progress_bar=False)

    def refuse(constant):
        raise AssertionError(f"{constant} in metrics.jsonl is not JSON")

    lines = [json.loads(line, parse_constant=refuse) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert lines and all(line["loss/lr_scale"] == 0.5 and line["loss/ratio"] is None for line in lines)


def test_diagnostics_of_numpy_values_and_tensors_are_written_and_survive_a_resume(toy_dataset, method_named, tmp_path):
    class Diag(_Base):
        def prepare(self, context):
            x = context.embed("source")
            self.diagnostics = {"mean": np.float32(0.5), "counts": np.arange(3), "norm": x.norm(dim=1).max() * 0 + 2.0,
                                "flag": np.bool_(True), "gap": float("inf"), "nested": {"n": np.int64(7)}}

    method_named("contract_diag", Diag)
    expected = {"mean": 0.5, "counts": [0, 1, 2], "norm": 2.0, "flag": True, "gap": None, "nested": {"n": 7}}

    killed_at(_config(toy_dataset, "contract_diag"), tmp_path / "r", 7)
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["diagnostics"] == expected  # weights_only loads it
    result = run(_config(toy_dataset, "contract_diag"), tmp_path / "r", resume=True, progress_bar=False)
    assert json.loads((tmp_path / "r" / "result.json").read_text())["diagnostics"] == expected
    assert result.diagnostics == expected  # and dalib.run returns them


def test_diagnostics_that_cannot_be_written_fail_before_training(toy_dataset, method_named, tmp_path):
    class Bad(_Base):
        def prepare(self, context):
            self.diagnostics = {"model": context.model}

        def loss(self, batch, out, progress):
            raise AssertionError("training must not start")

    method_named("contract_bad_diag", Bad)
    with pytest.raises(PluginError, match=r"diagnostics\['model'\] is DAModel"):
        run(_config(toy_dataset, "contract_bad_diag"), tmp_path / "r", progress_bar=False)


def test_param_groups_may_give_the_methods_own_modules_their_settings(toy_dataset, method_named, tmp_path):
    seen = {}

    class Critic(_Base):
        def __init__(self, config, model):
            super().__init__(config, model)
            self.critic = nn.Linear(model.features_dim, 1)

        def param_groups(self, model):
            return [*model.param_groups(), {"params": list(self.critic.parameters()), "lr_mult": 10.0}]

        def loss(self, batch, out, progress):
            seen["groups"] = [(len(g["params"]), g["lr_mult"]) for g in progress_optimizer()]
            return {"total": self.source_loss(batch, out) + 0.01 * self.critic(out.feat_t).pow(2).mean()}

    optimizers = []
    progress_optimizer = lambda: optimizers[-1].param_groups  # noqa: E731
    original = torch.optim.SGD

    def capture(*args, **kwargs):
        optimizers.append(original(*args, **kwargs))
        return optimizers[-1]

    method_named("contract_groups", Critic)
    mp = pytest.MonkeyPatch()
    mp.setattr(torch.optim, "SGD", capture)
    try:
        run(_config(toy_dataset, "contract_groups"), tmp_path / "r", progress_bar=False)
    finally:
        mp.undo()
    assert seen["groups"][-1] == (2, 10.0)  # the critic's weight and bias, once, with the method's multiplier
    assert sum(n for n, _ in seen["groups"]) == len([p for p in optimizers[-1].param_groups for p in p["params"]])


def test_param_groups_that_are_not_a_list_of_dicts_are_one_line(toy_dataset, method_named, tmp_path):
    class Bare(_Base):
        def param_groups(self, model):
            return model.parameters()  # torch's idiom, not the contract

    method_named("contract_bare_groups", Bare)
    with pytest.raises(PluginError, match=r"method 'contract_bare_groups': param_groups\(\) must return a list of "
                                          r"dicts, each with 'params' .*got a generator"):
        run(_config(toy_dataset, "contract_bare_groups"), tmp_path / "r", progress_bar=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("group", "message"), [
    ({"lr": 0.1}, r"gives a group its own 'lr', which the runner sets at every step .*give 'lr_mult'"),
    ({"lr_mul": 10.0}, r"gives a group the key\(s\) 'lr_mul'; a group takes lr_mult, momentum, params, weight_decay"),
    # values the optimizer would take without a word, or fail on later with torch's traceback
    ({"lr_mult": -1.0}, r"gives a group 'lr_mult' -1.0: it must be a finite number >= 0"),
    ({"lr_mult": "10"}, r"gives a group 'lr_mult' '10': it must be a finite number >= 0"),
    ({"lr_mult": True}, r"gives a group 'lr_mult' True: it must be a finite number >= 0"),
    ({"weight_decay": float("nan")}, r"gives a group 'weight_decay' nan: it must be a finite number >= 0"),
    ({"weight_decay": -0.1}, r"gives a group 'weight_decay' -0.1: it must be a finite number >= 0"),
    ({"momentum": 1.0}, r"gives a group 'momentum' 1.0: it must be a number in \[0, 1\)"),
    ({"momentum": -0.5}, r"gives a group 'momentum' -0.5: it must be a number in \[0, 1\)"),
    ({"momentum": None}, r"gives a group 'momentum' None: it must be a number in \[0, 1\)"),
])
def test_param_groups_keys_the_runner_would_overwrite_or_ignore_are_one_line(toy_dataset, method_named, tmp_path,
                                                                             group, message):
    class Keyed(_Base):
        def param_groups(self, model):
            return [{"params": list(model.parameters()), **group}]

    method_named("contract_keyed_groups", Keyed)
    with pytest.raises(PluginError, match=f"method 'contract_keyed_groups': param_groups\\(\\) {message}"):
        run(_config(toy_dataset, "contract_keyed_groups"), tmp_path / "r", progress_bar=False)


@pytest.mark.parametrize("twice", ["in two groups", "in one group"])
def test_param_groups_that_give_a_parameter_twice_are_one_line(toy_dataset, method_named, tmp_path, twice):
    """torch refuses a parameter in two groups with a ValueError (a traceback at the command
    line) and only warns of one given twice in a group."""
    class Twice(_Base):
        def param_groups(self, model):
            params = list(model.parameters())
            if twice == "in two groups":
                return [{"params": params}, {"params": params[:1], "lr_mult": 10.0}]
            return [{"params": params + params[-1:]}]

    method_named("contract_twice", Twice)
    with pytest.raises(PluginError, match=r"method 'contract_twice': param_groups\(\) gives a parameter twice "
                                          r"\(in one group or in two\): each parameter belongs to one group, once"):
        run(_config(toy_dataset, "contract_twice"), tmp_path / "r", progress_bar=False)


def test_param_groups_may_hold_an_iterator_of_parameters(toy_dataset, method_named, tmp_path):
    """``{"params": model.parameters()}`` is read once: every parameter reaches the optimizer."""
    start = []

    class Iterated(_Base):
        def param_groups(self, model):
            start.extend(p.detach().clone() for p in model.parameters())
            return [{"params": model.parameters()}]

    method_named("contract_iterated", Iterated)
    moved = run(_config(toy_dataset, "contract_iterated"), None, progress_bar=False).model
    assert len(start) == len(list(moved.parameters()))
    assert all(not torch.equal(a, b.cpu()) for a, b in zip(start, moved.parameters()))


class _PseudoLabels(_Base):
    """Pseudo-labels of the target made in prepare, kept through get_extra_state."""

    def prepare(self, context):  # as docs/plugins.md shows it
        self.pseudo = context.embed("target", lambda x: context.model(x).logits).argmax(1).cpu()

    def get_extra_state(self):
        return {"pseudo": self.pseudo}

    def set_extra_state(self, state):
        self.pseudo = state["pseudo"]

    def loss(self, batch, out, progress):
        pl = nn.functional.cross_entropy(out.logits_t, self.pseudo[batch.idx_t].to(out.logits_t.device))
        return {"total": self.source_loss(batch, out) + 0.1 * pl}


def test_state_made_in_prepare_resumes_through_extra_state(toy_dataset, method_named, tmp_path):
    method_named("contract_pseudo", _PseudoLabels)
    full = run(_config(toy_dataset, "contract_pseudo"), tmp_path / "full", progress_bar=False)

    killed_at(_config(toy_dataset, "contract_pseudo"), tmp_path / "cut", 8)
    resumed = run(_config(toy_dataset, "contract_pseudo"), tmp_path / "cut", resume=True, progress_bar=False)
    assert (resumed.source_accuracy, resumed.target_accuracy) == (full.source_accuracy, full.target_accuracy)


def test_state_that_does_not_fit_a_new_instance_is_one_line_on_resume(toy_dataset, method_named, tmp_path):
    class Buffered(_Base):
        def prepare(self, context):
            self.register_buffer("centre", context.embed("target").mean(0))

    method_named("contract_buffer", Buffered)

    killed_at(_config(toy_dataset, "contract_buffer"), tmp_path / "r", 8)
    with pytest.raises(PluginError, match="does not fit a new instance.*get_extra_state"):
        run(_config(toy_dataset, "contract_buffer"), tmp_path / "r", resume=True, progress_bar=False)
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["step"] == 5  # left as it was


def test_a_method_never_sees_a_target_label(toy_dataset, method_named, tmp_path):
    seen = {}

    class Peek(_Base):
        def prepare(self, context):
            seen["target"] = {int(y) for _, y in context.target}
            seen["source"] = {int(y) for _, y in context.source}

    method_named("contract_peek", Peek)
    run(_config(toy_dataset, "contract_peek", steps=2), tmp_path / "r", progress_bar=False)
    assert seen["target"] == {-1} and seen["source"] == {0, 1}


def test_a_config_that_is_not_a_frozen_dataclass_is_refused_at_registration(method_named):
    class NotDataclass(Method):
        """No dataclass."""

        class Config:
            weight = 1.0

    class Mutable(Method):
        """Not frozen."""

        @dataclass
        class Config:
            weight: float = 1.0

    for cls in (NotDataclass, Mutable):
        with pytest.raises(RegistryError, match=r"its Config must be a class decorated with @dataclass\(frozen=True\)"):
            method_named("contract_config", cls)


def test_a_config_subclass_left_undecorated_is_refused_at_registration(method_named):
    """A Config that subclasses a method's Config without @dataclass of its own inherits the
    dataclass marks: its new fields were not hyperparameters (--set refused them, result.json
    left them out) and a changed default was ignored, with no word at registration."""
    @dataclass(frozen=True)
    class BaseConfig:
        weight: float = 1.0

    class Parent(_Base):
        """A parent."""

        Config = BaseConfig

    class Child(Parent):
        """The decorator forgotten."""

        class Config(BaseConfig):
            extra: float = 0.1

    class Default(Parent):
        """The decorator forgotten, and a default changed."""

        class Config(BaseConfig):
            weight = 2.0

    class Checked(Parent):
        """No field of its own, a stricter check: a subclass needs no decorator for that."""

        class Config(BaseConfig):
            def __post_init__(self):
                if self.weight > 5:
                    raise ValueError("weight must be at most 5")

    class Labelled(Parent):
        """A class attribute in its Config, annotated ClassVar (no field: no decorator needed);
        it had been refused as a field the missing decorator would ignore."""

        class Config(BaseConfig):
            label: ClassVar[str] = "x"  # (a string here: from __future__ import annotations)

    class Aliased(Parent):
        """The same, with typing imported under a name of the module's own."""

        class Config(BaseConfig):
            label: tp.ClassVar[str] = "x"

    class Decorated(Parent):
        """As it should be."""

        @dataclass(frozen=True)
        class Config(BaseConfig):
            extra: float = 0.1

    for cls, ignored in ((Child, "extra"), (Default, "weight")):
        with pytest.raises(RegistryError, match=rf"^method 'contract_undecorated': its Config subclasses \S*BaseConfig "
                                                rf"but is not itself decorated with @dataclass\(frozen=True\), so its "
                                                rf"{ignored} would be ignored$"):
            method_named("contract_undecorated", cls)
    method_named("contract_checked", Checked)
    method_named("contract_labelled", Labelled)
    method_named("contract_aliased", Aliased)
    method_named("contract_decorated", Decorated)
    assert [f for f, *_ in describe_config(Decorated.Config)] == ["weight", "extra"]


def test_param_takes_a_default_factory():
    @dataclass(frozen=True)
    class Config:
        sizes: list = param(help="layer sizes", default_factory=lambda: [8, 4])

    assert Config().sizes == [8, 4] and Config().sizes is not Config().sizes
    assert describe_config(Config) == [("sizes", "list", "[8, 4]", "layer sizes")]


@pytest.mark.parametrize(
    "body, fragment",
    [
        ("a: float", "Config field 'a' has no default; every hyperparameter needs one"),
        ("a: float = 1.0\n        def __post_init__(self):\n            raise ValueError('a must be < 1')",
         "its Config's own defaults are refused by its checks: ValueError: a must be < 1"),
        ("cache: object = pathlib.Path('cache')", "Config field 'cache' defaults to PosixPath('cache'), which result.json "
                                                   "cannot hold"),
        ("kind: object = enum.Enum('Kind', 'A B').A", "Config field 'kind' defaults to <Kind.A: 1>"),
        # written to result.json as 0.5, though --set holds the field to integers
        ("a: int = 0.5", "Config field 'a' defaults to 0.5: expected an integer"),
    ],
    ids=["required", "own-check", "path", "enum", "type"],
)
def test_config_defaults_a_run_could_not_use_or_write_are_refused_at_registration(method_named, body, fragment):
    """Before: a Path default trained a whole run, then lost its result.json to a TypeError."""
    namespace = {}
    exec("import dataclasses, enum, pathlib\n"
         "@dataclasses.dataclass(frozen=True)\n"
         "class Config:\n"
         f"        {body}\n", namespace)
    cls = type("Defaults", (Method,), {"__doc__": "Defaults.", "Config": namespace["Config"]})
    with pytest.raises(RegistryError, match="method 'contract_defaults': ") as err:
        method_named("contract_defaults", cls)
    assert fragment in str(err.value)


def test_a_config_class_spelt_in_lower_case_is_refused(method_named):
    class Lower(Method):
        """Its hyperparameters would silently be none."""

        @dataclass(frozen=True)
        class config:  # noqa: N801 - the mistake under test
            weight: float = 1.0

    with pytest.raises(RegistryError, match=r"defines a class 'config': the hyperparameters are read from Config"):
        method_named("contract_lower", Lower)


def test_a_methods_own_config_instance_is_taken_as_its_hyperparameters(toy_dataset, method_named):
    class Weighted(_Base):
        @dataclass(frozen=True)
        class Config:
            weight: float = param(1.0, "the weight")

        def loss(self, batch, out, progress):
            return {"total": self.config.weight * self.source_loss(batch, out)}

    method_named("contract_instance", Weighted)
    config = _config(toy_dataset, "contract_instance", method_config=Weighted.Config(weight=0.5))
    assert config.method_config == {"weight": 0.5}


def test_a_config_field_that_init_leaves_out_is_not_read_at_registration(method_named):
    class Derived(_Base):
        """A field computed later (init=False), not set by __post_init__."""

        @dataclass(frozen=True)
        class Config:
            weight: float = 1.0
            cache: object = field(init=False)

    method_named("contract_init_false", Derived)  # no AttributeError


def test_param_groups_of_a_set_are_refused_for_their_order(toy_dataset, method_named, tmp_path):
    class Unordered(_Base):
        def param_groups(self, model):
            return [{"params": set(model.parameters())}]

    method_named("contract_set_groups", Unordered)
    with pytest.raises(PluginError, match="param_groups\\(\\)'s 'params' is a set, whose order changes"):
        run(_config(toy_dataset, "contract_set_groups"), None, progress_bar=False)


class _Phases(_Base):
    """Step 0 trains the whole network; step 1 the head alone, on detached features (a phase
    of a method that alternates updates, as docs/plugins.md describes)."""

    def loss(self, batch, out, progress):
        if progress.step % 2 == 0:
            return {"total": self.source_loss(batch, out)}
        logits = self.model.head(out.feat_s.detach())
        return {"total": torch.nn.functional.cross_entropy(logits, batch.y_s)}


def test_a_parameter_that_a_step_does_not_reach_stays_where_it_is(toy_dataset, method_named):
    method_named("phases_test", _Phases)
    one = run(_config(toy_dataset, "phases_test", steps=1), None, progress_bar=False).model
    two = run(_config(toy_dataset, "phases_test", steps=2), None, progress_bar=False).model
    moved = {name for (name, a), (_, b) in zip(one.named_parameters(), two.named_parameters(), strict=True)
             if not torch.equal(a, b)}
    # momentum and weight decay leave them alone too: their gradient is None, not zero
    assert moved and all(name.startswith("head.") for name in moved), sorted(moved)


class _RecordsItsStart(_Base):
    """Source cross-entropy; its diagnostics keep the network's starting weights."""

    def prepare(self, context):
        self.diagnostics = {"start": [float(p.detach().double().sum()) for p in context.model.parameters()]}


def test_the_seed_draws_the_starting_weights(toy_dataset, method_named):
    """Seeds differ in the network they start from, not only in the order of the batches: the
    spread over seeds in the benchmark tables depends on it."""
    method_named("records_start_test", _RecordsItsStart)
    start = {seed: run(_config(toy_dataset, "records_start_test", steps=1, seed=seed), None,
                       progress_bar=False).diagnostics["start"] for seed in (0, 1)}
    again = run(_config(toy_dataset, "records_start_test", steps=1, seed=0), None, progress_bar=False)
    assert again.diagnostics["start"] == start[0]
    differ = [a != b for a, b in zip(start[0], start[1], strict=True)]
    assert sum(differ) >= len(differ) // 2, differ  # every random layer (BatchNorm starts at 1 and 0)


def test_each_source_sample_brings_its_own_row_label_and_weight(toy_dataset, method_named):
    from dalib.data import load_domain

    seen = []

    class WeighsEachSample(_Base):
        """Gives source sample i the weight i + 1 and records what each batch brought."""

        def prepare(self, context):
            self.source_weights = torch.arange(1, len(context.source) + 1, dtype=torch.float32)

        def loss(self, batch, out, progress):
            seen.append((batch.idx_s.clone(), batch.x_s.detach().cpu().clone(), batch.y_s.cpu().clone(),
                         batch.w_s.detach().cpu().clone()))
            return {"total": self.source_loss(batch, out)}

    method_named("weighs_each_test", WeighsEachSample)
    run(_config(toy_dataset, "weighs_each_test", steps=30, batch_size=64), None, progress_bar=False)  # > 6 epochs
    src = load_domain(toy_dataset, "src")
    assert len(seen) == 30
    for idx, x, y, w in seen:
        torch.testing.assert_close(x, src.x[idx])
        assert torch.equal(y, src.y[idx])
        assert torch.equal(w, idx.float() + 1)


def test_a_run_writes_its_result_even_when_its_method_left_the_registry(toy_dataset, method_named, tmp_path):
    """result.json names the class that trained, not what the name means by the end (a
    notebook that re-registers or removes the method while a run trains)."""
    method_named("leaves_test", _RecordsItsStart)

    def leave(done, logs):
        if done == 3:
            unregister_method("leaves_test")

    run(_config(toy_dataset, "leaves_test", steps=3), tmp_path / "r", progress_bar=False, on_step=leave)
    written = json.loads((tmp_path / "r" / "result.json").read_text())
    assert written["method_class"].endswith("_RecordsItsStart") and "torch" in written["versions"]


def test_a_method_without_a_loss_is_refused_at_registration(method_named):
    """It had registered, and its first step (after the data and prepare()) raised the base
    class's error instead."""
    class NoLoss(Method):
        """Forgot its loss."""

        @dataclass(frozen=True)
        class Config:
            pass

    with pytest.raises(RegistryError, match=r"^method 'contract_no_loss' defines no loss\(batch, out, progress\)"):
        method_named("contract_no_loss", NoLoss)


@pytest.mark.parametrize(("weights", "fragment"), [
    # a QP solver's (N, 1) column had broadcast to (B, B) in source_loss: the weighting lost, the loss scaled by B
    (lambda n: torch.ones(n, 1), "must be a floating-point tensor of shape (300,), one weight per source sample, "
                                 "got (300, 1) torch.float32"),
    (lambda n: torch.ones(n - 1), "got (299,) torch.float32"),  # (had been an IndexError at some step)
    (lambda n: np.ones(n), "got a ndarray"),  # (had been an AttributeError)
    (lambda n: torch.ones(n, dtype=torch.int64), "got (300,) torch.int64"),
    (lambda n: -torch.ones(n), "must be finite and non-negative, and not all zero (min -1, max -1)"),
    (lambda n: torch.full((n,), float("nan")), "must be finite and non-negative"),  # (blamed on the learning rate)
    (lambda n: torch.zeros(n), "not all zero (min 0, max 0)"),
], ids=["column", "short", "numpy", "integer", "negative", "nan", "zero"])
def test_source_weights_that_source_loss_cannot_use_are_one_line_before_training(toy_dataset, method_named, tmp_path,
                                                                                weights, fragment):
    class Weighs(_Base):
        """Weights from prepare()."""

        def prepare(self, context):
            self.source_weights = weights(len(context.source))

    method_named("contract_weighs", Weighs)
    with pytest.raises(PluginError, match="^method 'contract_weighs': source_weights ") as err:
        run(_config(toy_dataset, "contract_weighs"), tmp_path / "r", progress_bar=False)
    assert fragment in str(err.value)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
