"""The method registry: decorator, duplicates, unknown names, entry points, --plugin."""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from click.testing import CliRunner

import dalib
from dalib.cli import cli
from dalib import Method, register_method
from dalib import registry
from dalib.errors import ConfigError, RegistryError, UnknownNameError


@pytest.fixture
def clean_registry(monkeypatch):
    """Registry state restored after the test, whatever it registered (the installed entry
    points loaded first, so that the state restored holds them)."""
    registry.list_methods()
    monkeypatch.setattr(registry, "_methods", dict(registry._methods))
    monkeypatch.setattr(registry, "_broken", dict(registry._broken))
    monkeypatch.setattr(registry, "_loaded_modules", {})
    monkeypatch.setattr(registry, "_deferred", [])
    monkeypatch.setattr(sys, "path", list(sys.path))  # a plugin file's folder joins it
    yield registry


#: a test plugin's loss(), in the text of its source file (every method defines one)
_LOSS = "    def loss(self, batch, out, progress):\n        return {'total': self.source_loss(batch, out)}\n"


def _method_class():
    class Tiny(Method):
        """A tiny method."""

        @dataclass(frozen=True)
        class Config:
            weight: float = 1.0

        def loss(self, batch, out, progress):
            cls = self.source_loss(batch, out)
            return {"total": cls}

    return Tiny


def test_builtin_methods_are_found_through_entry_points():
    names = dalib.list_methods()
    assert {"dann", "source_only"} <= set(names)
    assert names == sorted(names)
    assert dalib.get_method("dann").name == "dann"


def test_register_and_get(clean_registry):
    cls = register_method("tiny_test")(_method_class())
    assert dalib.get_method("tiny_test") is cls
    assert "tiny_test" in dalib.list_methods()
    assert cls.name == "tiny_test"


def test_same_class_twice_is_harmless_but_another_class_raises(clean_registry):
    cls = register_method("dup_test")(_method_class())
    register_method("dup_test")(cls)  # e.g. a module imported twice
    with pytest.raises(RegistryError, match="already registered"):
        register_method("dup_test")(_method_class())
    with pytest.raises(RegistryError, match="already registered"):
        register_method("dann")(_method_class())


def test_register_rejects_non_methods_and_bad_names(clean_registry):
    with pytest.raises(RegistryError, match="subclass of dalib.Method"):
        register_method("not_a_method")(object)
    with pytest.raises(RegistryError, match="invalid method name"):
        register_method("bad name!")
    with pytest.raises(RegistryError, match=r"invalid method name '-x'.*a leading '-' as an option"):
        register_method("-x")  # `dalib show -x` could never name it


def test_unknown_name_lists_known_methods():
    with pytest.raises(UnknownNameError) as info:
        dalib.get_method("nosuch")
    message = str(info.value)
    assert "unknown method 'nosuch'" in message
    for name in ("dann", "source_only"):
        assert name in message
    assert "\n" not in message


def test_broken_entry_point_is_reported_and_does_not_break_others(clean_registry, monkeypatch):
    good = _method_class()
    fake_eps = [
        EntryPoint("broken_plugin", "dalib_no_such_module_xyz", "dalib.methods"),
        EntryPoint("raises_plugin", "json:loads", "dalib.methods"),  # loads, but is no Method
        EntryPoint("empty_plugin", "json", "dalib.methods"),  # a module that registers nothing
        EntryPoint("good_plugin", f"{__name__}:GOOD", "dalib.methods"),
        EntryPoint("hyphen_plugin", "my-entmin", "dalib.methods"),  # names no module: it had broken every command
        EntryPoint("\x1b]0;HIJACKED\x07title", "dalib_no_such_module_xyz", "dalib.methods"),  # a terminal command
    ]
    globals()["GOOD"] = good
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep for ep in fake_eps if ep.group == group])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "_broken", {})
    names = dalib.list_methods()
    assert "good_plugin" in names and dalib.get_method("good_plugin") is good
    errors = registry.plugin_errors()
    assert set(errors) == {"broken_plugin", "raises_plugin", "empty_plugin", "hyphen_plugin", "\x1b]0;HIJACKED\x07title"}
    listing = CliRunner().invoke(cli, ["list"]).stdout
    assert "\\x1b]0;HIJACKED\\x07title" in listing and "\x1b" not in listing and "\x07" not in listing
    assert errors["hyphen_plugin"] == ("my-entmin: RegistryError: names no module: an entry point's value is "
                                       "'package.module' or 'package.module:attribute'")
    assert "ModuleNotFoundError" in errors["broken_plugin"]
    assert "subclass of dalib.Method" in errors["raises_plugin"]
    assert "registered no method" in errors["empty_plugin"]
    with pytest.raises(UnknownNameError, match="failed to load"):
        dalib.get_method("broken_plugin")


def test_two_packages_failing_under_one_name_are_both_reported_by_package(clean_registry, monkeypatch, tmp_path):
    """Each failing entry point names its package, and a second package's failure under the
    same name joins the first one's line: it had taken its place, and the first package's
    failure went unreported."""
    from importlib.metadata import PathDistribution

    eps = []
    for package, value in (("dalib-first", "dalib_no_such_module_one"), ("dalib-second", "dalib_no_such_module_two")):
        info = tmp_path / f"{package.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[dalib.methods]\nclash = {value}\n")
        eps += list(PathDistribution(info).entry_points)
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep for ep in eps if ep.group == group])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "_broken", {})
    dalib.list_methods()
    reason = registry.plugin_errors()["clash"]
    assert reason.startswith("dalib_no_such_module_one (package dalib-first): ModuleNotFoundError")
    assert "; dalib_no_such_module_two (package dalib-second): ModuleNotFoundError" in reason
    listing = CliRunner().invoke(cli, ["list"]).stdout
    assert "dalib-first" in listing and "dalib-second" in listing


def test_dalibs_own_entry_points_load_before_a_package_whose_name_sorts_first(clean_registry, monkeypatch, tmp_path):
    """An installed package named before "dalib" (aaa-methods) that registers a name dalib's own
    entry point registers is the one reported as failed: the built-in method stays."""
    from importlib.metadata import PathDistribution

    eps = []
    for package, module in (("aaa-methods", "aaa_order_clash"), ("dalib", "own_order_clash")):
        (tmp_path / f"{module}.py").write_text(
            f"from dalib import Method, register_method\n\n@register_method('order_clash')\nclass {module.title()}(Method):\n"
            f"    \"\"\"From {package}.\"\"\"\n{_LOSS}")
        info = tmp_path / f"{package.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[dalib.methods]\norder_clash = {module}\n")
        eps += list(PathDistribution(info).entry_points)
    monkeypatch.syspath_prepend(str(tmp_path))
    for listed in (eps, eps[::-1]):  # whatever order the environment lists them in
        monkeypatch.setattr(registry, "entry_points", lambda group: [ep for ep in listed if ep.group == group])
        monkeypatch.setattr(registry, "_entry_points_loaded", False)
        monkeypatch.setattr(registry, "_methods", {k: v for k, v in registry._methods.items() if k != "order_clash"})
        monkeypatch.setattr(registry, "_broken", {})
        monkeypatch.setattr(registry, "_loaded_modules", {})
        for module in ("aaa_order_clash", "own_order_clash"):
            sys.modules.pop(module, None)
        assert dalib.get_method("order_clash").__name__ == "Own_Order_Clash"
        assert "aaa-methods" in registry.plugin_errors()["order_clash"]


PARTLY = """
from dataclasses import dataclass
from dalib import Method, register_method

@register_method("{first}")
class First(Method):
    \"\"\"Registered before the import fails.\"\"\"
    def loss(self, batch, out, progress):
        return {{"total": self.source_loss(batch, out)}}

{then}
"""


def test_a_plugin_that_fails_partway_registers_nothing(clean_registry, monkeypatch, tmp_path):
    """A module that registers a method and then fails (a second method's Config without a
    default, an error further down) is a failed plugin whose methods are not offered: the
    first had stayed registered, and dalib run and dalib bench trained it without a word."""
    (tmp_path / "half_ep.py").write_text(PARTLY.format(first="half_ep", then="raise ImportError('fails after')"))
    monkeypatch.syspath_prepend(str(tmp_path))
    fake_eps = [EntryPoint("half_ep", "half_ep", "dalib.methods")]
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep for ep in fake_eps if ep.group == group])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    # the usual layout too: a package whose __init__ imports its methods module, then fails
    (tmp_path / "halfpkg").mkdir()
    (tmp_path / "halfpkg" / "methods.py").write_text(PARTLY.format(first="half_pkg", then=""))
    (tmp_path / "halfpkg" / "__init__.py").write_text("from . import methods\nraise ImportError('pkg fails after')\n")
    fake_eps.append(EntryPoint("half_pkg", "halfpkg", "dalib.methods"))
    before = set(dalib.list_methods()) - {"half_ep", "half_pkg"}
    assert set(dalib.list_methods()) == before and "fails after" in registry.plugin_errors()["half_ep"]
    assert "pkg fails after" in registry.plugin_errors()["half_pkg"]
    for name in ("half_ep", "half_pkg"):
        with pytest.raises(UnknownNameError, match="failed to load"):
            dalib.get_method(name)
    with pytest.raises(RegistryError, match="pkg fails after"):
        registry.load_plugin_module("halfpkg")
    assert set(dalib.list_methods()) == before
    second = ("@register_method('half_two')\nclass Second(Method):\n"
              "    @dataclass(frozen=True)\n    class Config:\n        weight: float\n")
    plugin = tmp_path / "half_file.py"
    plugin.write_text(PARTLY.format(first="half_one", then=second))
    with pytest.raises(RegistryError, match="weight"):
        registry.load_plugin_module(plugin)
    assert set(dalib.list_methods()) == before
    # a file that loaded before and fails on its second load keeps its first classes
    plugin.write_text(PARTLY.format(first="half_one", then=""))
    assert registry.load_plugin_module(plugin) == ["half_one"]
    first = dalib.get_method("half_one")
    plugin.write_text(PARTLY.format(first="half_one", then=second))
    with pytest.raises(RegistryError, match="weight"):
        registry.load_plugin_module(plugin)
    assert set(dalib.list_methods()) == before | {"half_one"} and dalib.get_method("half_one") is first


def test_entry_points_that_exit_or_have_a_bad_name_or_alias_a_class_are_failed_plugins(clean_registry, monkeypatch,
                                                                                        tmp_path):
    """A plugin module that exits as it is imported (a script's argparse at module level), an
    entry point named as no command line can run it, and a class that is registered already
    under its own name are each a failed plugin; the others load."""
    (tmp_path / "exits_at_import.py").write_text("import sys\nsys.exit(2)\n")
    (tmp_path / "exits_saying.py").write_text("import sys\nsys.exit('usage: x [-h]\\nx: error: --foo is required')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    good, aliased = _method_class(), _method_class()
    register_method("aliased_once")(aliased)
    globals()["GOOD_TOO"], globals()["ALIASED"] = good, aliased
    fake_eps = [
        EntryPoint("exits_plugin", "exits_at_import", "dalib.methods"),
        EntryPoint("exits_saying", "exits_saying", "dalib.methods"),
        EntryPoint("-dash", f"{__name__}:GOOD_TOO", "dalib.methods"),
        EntryPoint("alias_plugin", f"{__name__}:ALIASED", "dalib.methods"),
        EntryPoint("good_too", f"{__name__}:GOOD_TOO", "dalib.methods"),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep for ep in fake_eps if ep.group == group])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "_broken", {})
    names = dalib.list_methods()
    assert "good_too" in names and "-dash" not in names and "alias_plugin" not in names
    errors = registry.plugin_errors()
    assert set(errors) == {"exits_plugin", "exits_saying", "-dash", "alias_plugin"}
    assert errors["exits_plugin"].endswith("exited as it was imported (status 2)")
    assert errors["exits_saying"].endswith("exited as it was imported (usage: x [-h])")  # one line
    assert "invalid method name" in errors["-dash"]
    assert "registered as 'aliased_once' already" in errors["alias_plugin"]
    assert dalib.get_method("aliased_once").name == "aliased_once"
    # a --plugin file that exits is a one-line RegistryError too, not the exit of the process
    with pytest.raises(RegistryError, match="exited as it was imported \\(status 2\\)$"):
        dalib.load_plugin_module(str(tmp_path / "exits_at_import.py"))


def test_load_plugin_module_from_a_file(clean_registry, tmp_path):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(
        "from dataclasses import dataclass\n"
        "import dalib\n"
        "@dalib.register_method('file_plugin_test')\n"
        "class FilePlugin(dalib.Method):\n"
        "    '''From a file.'''\n"
        "    @dataclass(frozen=True)\n"
        "    class Config:\n"
        "        pass\n"
        "    def loss(self, batch, out, progress):\n"
        "        return {'total': self.source_loss(batch, out)}\n"
    )
    assert dalib.load_plugin_module(str(plugin)) == ["file_plugin_test"]
    assert dalib.get_method("file_plugin_test").__doc__ == "From a file."


def test_a_plugin_file_with_postponed_annotations_loads(clean_registry, tmp_path):
    # dataclasses resolve string annotations through sys.modules[cls.__module__]
    plugin = tmp_path / "future_plugin.py"
    plugin.write_text(
        "from __future__ import annotations\n"
        "from dataclasses import dataclass\n"
        "import dalib\n"
        "@dalib.register_method('future_plugin_test')\n"
        "class FuturePlugin(dalib.Method):\n"
        "    '''Annotations as strings.'''\n"
        "    @dataclass(frozen=True)\n"
        "    class Config:\n"
        "        weight: float = dalib.param(0.5, 'a weight')\n"
        "    def loss(self, batch, out, progress):\n"
        "        return {'total': self.config.weight * self.source_loss(batch, out)}\n"
    )
    assert dalib.load_plugin_module(str(plugin)) == ["future_plugin_test"]
    assert dalib.get_method("future_plugin_test").Config().weight == 0.5


def test_load_plugin_module_errors(clean_registry, tmp_path):
    with pytest.raises(RegistryError, match="cannot load plugin 'dalib_no_such_module_xyz'"):
        dalib.load_plugin_module("dalib_no_such_module_xyz")
    bad = tmp_path / "bad_plugin.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(RegistryError, match="RuntimeError: boom"):
        dalib.load_plugin_module(str(bad))
    with pytest.raises(RegistryError, match="no such file"):
        dalib.load_plugin_module(str(tmp_path / "missing.py"))


def test_a_user_plugin_cannot_shadow_an_installed_method_by_loading_first(clean_registry, monkeypatch, tmp_path):
    """``--plugin`` runs before anything has listed the methods: the installed entry points are
    registered first all the same, so a clash is an error, not a silent replacement."""
    installed = _method_class()
    globals()["INSTALLED"] = installed
    monkeypatch.setattr(registry, "entry_points",
                        lambda group: [EntryPoint("installed_x", f"{__name__}:INSTALLED", "dalib.methods")])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    plugin = tmp_path / "clash.py"
    plugin.write_text(
        "import dalib\n"
        "@dalib.register_method('installed_x')\n"
        "class Clash(dalib.Method):\n"
        "    '''Not the installed one.'''\n" + _LOSS
    )
    with pytest.raises(RegistryError, match="'installed_x' is already registered by .*_method_class.<locals>.Tiny"):
        dalib.load_plugin_module(str(plugin))
    assert dalib.get_method("installed_x") is installed


def test_load_plugin_module_returns_only_its_own_names_and_can_load_a_file_again(clean_registry, tmp_path,
                                                                                   monkeypatch):
    installed = _method_class()
    globals()["INSTALLED_Y"] = installed
    monkeypatch.setattr(registry, "entry_points",
                        lambda group: [EntryPoint("installed_y", f"{__name__}:INSTALLED_Y", "dalib.methods")])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)  # as in a fresh process
    monkeypatch.setattr(registry, "_methods", {})
    plugin = tmp_path / "again_plugin.py"
    plugin.write_text(
        "import dalib\n"
        "@dalib.register_method('again_test')\n"
        "class Again(dalib.Method):\n"
        "    '''First version.'''\n" + _LOSS
    )
    assert dalib.load_plugin_module(str(plugin)) == ["again_test"]  # not the installed ones loaded on the way
    assert dalib.list_methods() == ["again_test", "installed_y"]
    plugin.write_text(plugin.read_text().replace("First", "Second"))
    assert dalib.load_plugin_module(str(plugin)) == ["again_test"]  # a notebook cell run twice
    assert dalib.get_method("again_test").__doc__ == "Second version."


def _plugin_source(name: str) -> str:
    return (
        "import dalib\n"
        f"@dalib.register_method('{name}')\n"
        "class P(dalib.Method):\n"
        f"    '''Method {name}.'''\n"
        "    def loss(self, batch, out, progress):\n"
        "        return {'total': self.source_loss(batch, out)}\n"
    )


def test_load_plugin_module_by_its_dotted_name(clean_registry, tmp_path, monkeypatch):
    (tmp_path / "dalib_dotted_plugin_test.py").write_text(_plugin_source("dotted_test"))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert dalib.load_plugin_module("dalib_dotted_plugin_test") == ["dotted_test"]
    assert dalib.get_method("dotted_test").__doc__ == "Method dotted_test."


def test_two_plugin_files_with_the_same_name_in_other_folders_both_load(clean_registry, tmp_path):
    for folder, name in (("a", "same_stem_a"), ("b", "same_stem_b")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "plugin.py").write_text(_plugin_source(name))
    assert dalib.load_plugin_module(str(tmp_path / "a" / "plugin.py")) == ["same_stem_a"]
    assert dalib.load_plugin_module(str(tmp_path / "b" / "plugin.py")) == ["same_stem_b"]
    assert {"same_stem_a", "same_stem_b"} <= set(dalib.list_methods())


def test_importing_a_builtin_plugin_module_first_reports_no_failure(clean_registry, monkeypatch):
    """``import dalib_plugins.dann`` before anything listed the methods: its decorator loads the
    entry points while the module is half imported; that is no failed plugin."""
    import importlib
    import sys

    dalib.list_methods()  # the other built-in modules are imported and registered, as in any process
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "_methods", {k: v for k, v in registry._methods.items() if k != "dann"})
    monkeypatch.setattr(registry, "_broken", {})
    monkeypatch.delitem(sys.modules, "dalib_plugins.dann", raising=False)
    importlib.import_module("dalib_plugins.dann")
    assert registry.plugin_errors() == {}
    assert "dann" in dalib.list_methods() and "mmd" in dalib.list_methods()


def test_a_plugin_module_in_the_working_directory_can_be_named(clean_registry, tmp_path, monkeypatch):
    """The console script does not put the working directory on sys.path (`python -m` does):
    `--plugin my_module` finds my_module.py there all the same."""
    import sys

    (tmp_path / "dalib_cwd_plugin_test.py").write_text(_plugin_source("cwd_test"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert dalib.load_plugin_module("dalib_cwd_plugin_test") == ["cwd_test"]


def test_a_notebook_cell_run_again_replaces_its_method(clean_registry):
    cell = (
        "import dalib\n"
        "@dalib.register_method('cell_test')\n"
        "class Cell(dalib.Method):\n"
        "    'Defined in a notebook cell.'\n" + _LOSS
    )
    first, second = {"__name__": "__main__"}, {"__name__": "__main__"}
    exec(compile(cell, "<cell>", "exec"), first)
    exec(compile(cell, "<cell>", "exec"), second)  # the cell run a second time, after an edit
    assert dalib.get_method("cell_test") is second["Cell"] is not first["Cell"]
    renamed = cell.replace("class Cell", "class Other")
    with pytest.raises(RegistryError, match=r"already registered by __main__.Cell \(to replace it in this session: "
                                            r"dalib.registry.unregister_method\('cell_test'\) first\)$"):
        exec(compile(renamed, "<cell>", "exec"), {"__name__": "__main__"})
    registry.unregister_method("cell_test")  # as the error says
    exec(compile(renamed, "<cell>", "exec"), third := {"__name__": "__main__"})
    assert dalib.get_method("cell_test") is third["Other"]


def test_a_plugin_file_that_is_also_installed_says_to_drop_the_flag(clean_registry, monkeypatch, tmp_path):
    source = "import dalib\n@dalib.register_method('twice_x')\nclass Twice(dalib.Method):\n    'Installed and given.'\n" + _LOSS
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "twice_mod.py").write_text(source)  # the installed copy
    (tmp_path / "twice_mod.py").write_text(source)  # the file next to the user
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    monkeypatch.setattr(registry, "entry_points",
                        lambda group: [EntryPoint("twice_x", "twice_mod", "dalib.methods")])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.delitem(sys.modules, "twice_mod", raising=False)
    with pytest.raises(RegistryError, match=r"already registered by twice_mod\.Twice: the module 'twice_mod' is "
                                            r"installed \(an entry point\), so drop --plugin"):
        dalib.load_plugin_module(str(tmp_path / "twice_mod.py"))


def test_a_plugin_file_imports_the_modules_beside_it_and_may_be_a_path(clean_registry, tmp_path):
    """As ``python plugin.py`` would: a plugin split into two files loads by its path."""
    (tmp_path / "dalib_sibling_helper_test.py").write_text("WEIGHT = 0.25\n")
    (tmp_path / "sibling_user.py").write_text(
        "import dalib_sibling_helper_test as helper\n" + _plugin_source("sibling_test")
        + "assert helper.WEIGHT == 0.25\n")
    assert dalib.load_plugin_module(tmp_path / "sibling_user.py") == ["sibling_test"]  # a Path, too


def test_a_name_taken_by_another_plugin_file_names_that_file(clean_registry, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "plugin.py").write_text(_plugin_source("taken_test"))
    dalib.load_plugin_module(str(tmp_path / "a" / "plugin.py"))
    with pytest.raises(RegistryError, match=r"'taken_test' is already registered by \w+ in "
                                            + str(tmp_path / "a" / "plugin.py").replace("/", r"\/")):
        dalib.load_plugin_module(str(tmp_path / "b" / "plugin.py"))


def test_an_unknown_method_after_loading_plugins_says_what_they_registered(clean_registry, tmp_path):
    (tmp_path / "forgot.py").write_text("import dalib\nclass A(dalib.Method):\n    'No decorator.'\n")
    (tmp_path / "good.py").write_text(_plugin_source("good_loaded_test"))
    dalib.load_plugin_module(str(tmp_path / "forgot.py"))
    dalib.load_plugin_module(str(tmp_path / "good.py"))
    with pytest.raises(UnknownNameError, match=r"unknown method 'A' \(.*forgot.py registered no method; .*good.py "
                                               r"registered good_loaded_test: a method is registered by "
                                               r"@register_method\('A'\) on its class\)"):
        dalib.get_method("A")


def _one_entry_point(monkeypatch, folder, name, value):
    """The installed entry points are ``name = value`` alone, importable from ``folder``, not loaded yet."""
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(registry, "entry_points", lambda group: [EntryPoint(name, value, "dalib.methods")])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "_broken", {})


def test_an_entry_point_naming_a_class_of_a_module_being_imported_is_no_failure(clean_registry, monkeypatch,
                                                                                tmp_path):
    """``import my_plugin`` (which imports dalib) before anything listed the methods, with the
    entry point in class form, ``my_plugin:MyMethod``: no failed plugin is reported."""
    (tmp_path / "dalib_class_ep_test.py").write_text(
        "import dalib\n@dalib.register_method('class_ep_test')\nclass ClassEp(dalib.Method):\n    'Class form.'\n" + _LOSS)
    _one_entry_point(monkeypatch, tmp_path, "class_ep_test", "dalib_class_ep_test:ClassEp")
    monkeypatch.delitem(sys.modules, "dalib_class_ep_test", raising=False)
    import importlib

    module = importlib.import_module("dalib_class_ep_test")
    assert registry.plugin_errors() == {}
    assert dalib.get_method("class_ep_test") is module.ClassEp


def test_a_class_entry_point_of_a_package_still_importing_is_registered_once_it_has(clean_registry, monkeypatch,
                                                                                    tmp_path):
    """mypkg/__init__ defines an undecorated class (the entry point names it) and then imports a
    module that decorates another: that decorator loads the entry points while mypkg is half
    imported. The class is registered at the next lookup, not skipped for good."""
    pkg = tmp_path / "dalib_halfpkg_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import dalib\nclass Plain(dalib.Method):\n    'Named by the entry point.'\n" + _LOSS +
        "from dalib_halfpkg_test import other  # noqa: E402\n")
    (pkg / "other.py").write_text(
        "import dalib\n@dalib.register_method('half_other_test')\nclass Other(dalib.Method):\n    'Decorated.'\n" + _LOSS)
    _one_entry_point(monkeypatch, tmp_path, "half_plain_test", "dalib_halfpkg_test:Plain")
    import importlib

    module = importlib.import_module("dalib_halfpkg_test")
    assert dalib.get_method("half_plain_test") is module.Plain
    assert registry.plugin_errors() == {} and "half_other_test" in dalib.list_methods()


@pytest.mark.parametrize("order", [("base_split.py", "derived_split.py"), ("derived_split.py", "base_split.py")])
def test_a_plugin_split_into_files_loads_each_once_in_either_order(clean_registry, tmp_path, order):
    (tmp_path / "base_split.py").write_text(
        "import dalib\n@dalib.register_method('base_split_test')\nclass BaseM(dalib.Method):\n    'Base.'\n" + _LOSS)
    (tmp_path / "derived_split.py").write_text(
        "import dalib\nfrom base_split import BaseM\n@dalib.register_method('derived_split_test')\n"
        "class DerivedM(BaseM):\n    'Derived.'\n")
    for name in order:
        dalib.load_plugin_module(str(tmp_path / name))
    assert dalib.get_method("derived_split_test").__mro__[1] is dalib.get_method("base_split_test")
    sys.modules.pop("base_split", None)


def test_a_value_refused_by_an_optional_type_says_why():
    """``float | None`` had said "expected float|None" of inf, which is a float."""
    from dalib.config import parse_value

    with pytest.raises(ConfigError, match=r"^bad value 'inf' for bandwidth: expected a finite number \(or none\)$"):
        parse_value("inf", float | None, "bandwidth")
    assert parse_value("none", float | None, "bandwidth") is None and parse_value("2", float | None, "b") == 2.0
    with pytest.raises(ConfigError, match=r"^bad value \[1\] for k: expected int\|str\|None$"):  # several: named
        parse_value([1], int | str | None, "k")


def test_set_values_parse_as_their_fields_type():
    """What --set and config files give as text: booleans in their usual spellings, and a
    value that itself holds '=' (a path) kept whole."""
    from dalib.cli import _parse_sets
    from dalib.config import build_config

    dan = dalib.get_method("mmd").Config
    for text, value in [("on", True), ("yes", True), ("1", True), ("True", True), ("off", False), ("no", False),
                        ("0", False), ("false", False)]:
        assert build_config(dan, {"on_logits": text}).on_logits is value, text
    with pytest.raises(ConfigError, match="expected true or false"):
        build_config(dan, {"on_logits": "maybe"})
    assert _parse_sets(("init=runs/lr=0.1 ", " trade_off = 2")) == {"init": "runs/lr=0.1", "trade_off": "2"}


def test_a_fixed_length_tuple_parses_each_item_as_its_own_type_and_text_stays_text():
    """tuple[int, float]: item i has type i and the length is checked (each item had the first
    item's type, so the default (1, 0.5) itself was refused); a str field takes text only (a
    TOML list or number became its printed form)."""
    from dalib.config import build_config

    @dataclass(frozen=True)
    class Config:
        pair: tuple[int, float] = (1, 0.5)
        many: tuple[int, ...] = (1,)
        name: str = "a"

    assert build_config(Config, {"pair": "2,1.5"}).pair == (2, 1.5)
    assert build_config(Config, {"pair": [3, 0.25]}).pair == (3, 0.25)  # a TOML array
    assert build_config(Config, {"pair": (1, 0.5)}).pair == (1, 0.5)  # RunConfig(method_config=Config())
    assert build_config(Config, {"many": "1,2,3"}).many == (1, 2, 3)
    with pytest.raises(ConfigError, match="expected 2 items \\(int, float\\), got 3"):
        build_config(Config, {"pair": "1,2,3"})
    with pytest.raises(ConfigError, match="expected an integer"):
        build_config(Config, {"pair": "0.5,1"})
    assert build_config(Config, {"name": "5"}).name == "5"
    for value in ([1, 2], 5, {"a": 1}):
        with pytest.raises(ConfigError, match="expected text"):
            build_config(Config, {"name": value})


def test_an_empty_list_value_or_item_is_refused_not_dropped():
    """--set sigmas=$S with S unset gave [] (and None | list gave [], not None), and 1,,2.5 a
    pair (1, 2.5), each recorded as meant; an empty list is written []."""
    from dalib.config import build_config

    @dataclass(frozen=True)
    class Config:
        pair: tuple[int, float] = (1, 0.5)
        many: list[float] = dataclasses.field(default_factory=lambda: [1.0])
        maybe: list[float] | None = None

    for key, text, message in (("many", "", r"expected list\[float\], got nothing \(an empty list is \[\]\)$"),
                               ("maybe", " ", r"expected list\[float\], got nothing \(an empty list is \[\]\) \(or none\)$"),
                               ("pair", "1,,2.5", r"an empty item \(two commas together, or one at an end\)$"),
                               ("many", "1,2,", r"an empty item")):
        with pytest.raises(ConfigError, match=rf"^bad value '{text}' for {key}: {message}"):
            build_config(Config, {key: text})
    assert build_config(Config, {"many": "[]", "maybe": "none"}) == Config(many=[], maybe=None)
    assert build_config(Config, {"many": "[1, 2]", "maybe": "3"}) == Config(many=[1.0, 2.0], maybe=[3.0])



def test_list_and_dict_values_parse_on_python_3_10_with_tomli(monkeypatch):
    """Python 3.10 has no tomllib, and dalib declares tomli there: every place that reads TOML
    takes it (a list or dict --set had failed with ModuleNotFoundError on 3.10)."""
    import tomllib
    import types

    from dalib.config import build_config

    monkeypatch.setitem(sys.modules, "tomllib", None)  # (as on 3.10: the import fails)
    monkeypatch.setitem(sys.modules, "tomli", types.SimpleNamespace(loads=tomllib.loads,
                                                                    TOMLDecodeError=tomllib.TOMLDecodeError))

    @dataclass(frozen=True)
    class Config:
        sizes: tuple[int, ...] = (1, 2)
        weights: dict = dataclasses.field(default_factory=dict)

    assert build_config(Config, {"sizes": "[128, 64]", "weights": "{a = 1}"}) == Config((128, 64), {"a": 1})


def test_a_shallow_run_seeds_the_random_numbers_its_method_draws(clean_registry):
    """A third-party shallow form that draws from torch's generator (a random projection, say)
    gives the same numbers for the same seed and others for another seed: the shallow runner
    seeds as the deep one does."""
    import torch

    from dalib.plugin import Adapted
    from dalib.runner import RunConfig, run

    @register_method("random_projection_test")
    class RandomProjection(Method):
        """Projects both domains on 4 random directions."""

        @dataclass(frozen=True)
        class Config:
            pass

        @dataclass(frozen=True)
        class ShallowConfig:
            dims: int = 4

        def loss(self, batch, out, progress):
            return {"total": self.source_loss(batch, out)}

        @classmethod
        def adapt(cls, config, xs, ys, xt):
            proj = torch.randn(xs.shape[1], config.dims, dtype=xs.dtype)  # (D, 4)
            return Adapted(xs @ proj, xt @ proj, info={"first_draw": float(proj[0, 0])})

    def draw(seed):
        cfg = RunConfig(method="random_projection_test", mode="shallow", src="mnist", tgt="usps", seed=seed,
                        classifier="1nn")
        return run(cfg, None, progress_bar=False).diagnostics["first_draw"]

    assert draw(0) == draw(0) != draw(1)


def _scaled_method_source(head: str) -> str:
    """A plugin module whose method, declared by ``head`` (its decorator and class line), scales
    the source loss: a template of ``doc`` and ``scale`` for ``str.format``."""
    return ("from dataclasses import dataclass\n"
            "import dalib\n"
            f"{head}\n"
            "    '''{doc}'''\n"
            "    @dataclass(frozen=True)\n"
            "    class Config:\n"
            "        pass\n"
            "    def loss(self, batch, out, progress):\n"
            "        return {{'total': {scale} * self.source_loss(batch, out)}}\n")


def test_a_resume_after_the_method_file_was_edited_warns_and_records_the_step(clean_registry, tmp_path):
    """A run killed, its plugin file edited (a fix, say), the run resumed: the result mixes two
    versions of the method, and the resume says so (a warning naming the file and the step,
    and ``method_code_changed_at`` in result.json). An edit of a docstring alone changes nothing."""
    import json
    import warnings

    from dalib.runner import RunConfig, load_checkpoint, run

    plugin = tmp_path / "edited_plugin.py"
    body = _scaled_method_source("@dalib.register_method('edited_plugin_test')\nclass Edited(dalib.Method):")
    plugin.write_text(body.format(doc="Scaled source loss.", scale="1.0"))
    dalib.load_plugin_module(str(plugin))
    config = RunConfig(method="edited_plugin_test", src="mnist", tgt="usps", steps=6, batch_size=8,
                       checkpoint_every=2)

    class Killed(Exception):
        pass

    def kill_at_3(step, logs):
        if step == 3:
            raise Killed

    for doc, scale, out in (("Scaled source loss, documented otherwise.", "1.0", "same"), ("Scaled.", "0.5", "edited")):
        plugin.write_text(body.format(doc="Scaled source loss.", scale="1.0"))
        with pytest.raises(Killed):
            run(config, tmp_path / out, progress_bar=False, on_step=kill_at_3)
        assert load_checkpoint(tmp_path / out / "checkpoint.pt")["step"] == 2
        plugin.write_text(body.format(doc=doc, scale=scale))
        if out == "same":
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                run(config, tmp_path / out, resume=True, progress_bar=False)
            assert "method_code_changed_at" not in json.loads((tmp_path / out / "result.json").read_text())
            continue
        with pytest.warns(RuntimeWarning, match=r"the code of method 'edited_plugin_test' \(Edited in .*edited_plugin"
                                                r"\.py\) changed since the checkpoint of step 2") as rec:
            run(config, tmp_path / out, resume=True, progress_bar=False)
        assert rec[0].filename == __file__  # the caller's line
        assert json.loads((tmp_path / out / "result.json").read_text())["method_code_changed_at"] == [2]
        assert load_checkpoint(tmp_path / out / "checkpoint.pt")["method_code_changed_at"] == [2]


def test_a_subclass_of_a_method_of_another_module_is_hashed_with_that_module(tmp_path, monkeypatch):
    """A downstream package's subclass of a bundled method runs the parent's loss: an edit of the
    parent's file (a dalib upgrade) changes the numbers, and had left the subclass's hash, so its
    resume and a benchmark's kept cells, unchanged. A class of one module hashes as before."""
    import importlib

    from dalib.registry import _module_code_hash, method_code_hash

    parent = tmp_path / "hash_parent_mod.py"
    body = _scaled_method_source("class Parent(dalib.Method):")
    parent.write_text(body.format(doc="Scaled.", scale="1.0"))
    (tmp_path / "hash_child_mod.py").write_text("from hash_parent_mod import Parent\n"
                                                "class Child(Parent):\n"
                                                "    '''Adds nothing.'''\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "hash_parent_mod", raising=False)
    monkeypatch.delitem(sys.modules, "hash_child_mod", raising=False)
    child = importlib.import_module("hash_child_mod").Child
    first = method_code_hash(child)
    assert len(first) == 16 and first != _module_code_hash(child)
    assert method_code_hash(child.__mro__[1]) == _module_code_hash(child.__mro__[1])  # one module: as before
    parent.write_text(body.format(doc="Scaled, documented otherwise.", scale="1.0"))
    assert method_code_hash(child) == first
    parent.write_text(body.format(doc="Scaled.", scale="0.5"))
    assert method_code_hash(child) != first
    # a mixin of another module that is no method, whose loss the method runs
    mixin = tmp_path / "hash_mixin_mod.py"
    mixin.write_text("class Scaled:\n    scale = 1.0\n")
    (tmp_path / "hash_mixed_mod.py").write_text("import dalib\nfrom hash_mixin_mod import Scaled\n"
                                                "class Mixed(Scaled, dalib.Method):\n    '''Mixed.'''\n")
    monkeypatch.delitem(sys.modules, "hash_mixin_mod", raising=False)
    monkeypatch.delitem(sys.modules, "hash_mixed_mod", raising=False)
    mixed = method_code_hash(importlib.import_module("hash_mixed_mod").Mixed)
    mixin.write_text("class Scaled:\n    scale = 0.5\n")
    assert method_code_hash(sys.modules["hash_mixed_mod"].Mixed) != mixed


def test_a_resume_after_a_notebook_cell_was_edited_warns_too(clean_registry, tmp_path, monkeypatch):
    """A method defined in a notebook cell has no source file (its module's is not the cell's):
    its compiled code is hashed instead, so that a resume after the cell was edited says so,
    as one after a file's edit does; the cell run again unchanged (under another cell name, with
    another docstring) is the same code."""
    import json
    import types
    import warnings

    from dalib.registry import method_code_hash
    from dalib.runner import RunConfig, run

    cell = ("from dataclasses import dataclass\n"
            "import dalib\n"
            "@dalib.register_method('cell_edit_test')\n"
            "class Cell(dalib.Method):\n"
            "    '''{doc}'''\n"
            "    @dataclass(frozen=True)\n"
            "    class Config:\n"
            "        weight: float = {default}\n"
            "    def loss(self, batch, out, progress):\n"
            "        '''{doc}'''\n"
            "        return {{'total': {scale} * self.config.weight * self.source_loss(batch, out)}}\n")

    kernel = types.ModuleType("notebook_cell_module_test")  # a notebook's __main__: no source file to read
    monkeypatch.setitem(sys.modules, kernel.__name__, kernel)

    def run_cell(number, doc="Scaled.", scale="1.0", default="1.0"):
        exec(compile(cell.format(doc=doc, scale=scale, default=default), f"<ipython-input-{number}>", "exec"),
             kernel.__dict__)
        return kernel.Cell

    first = method_code_hash(run_cell(1))
    assert len(first) == 16 and method_code_hash(run_cell(2, doc="Documented otherwise.")) == first
    assert method_code_hash(run_cell(3, default="2.0")) != first != method_code_hash(run_cell(4, scale="0.5"))
    config = RunConfig(method="cell_edit_test", src="mnist", tgt="usps", steps=4, batch_size=8, checkpoint_every=2)

    class Killed(Exception):
        pass

    def kill_at_3(step, logs):
        if step == 3:
            raise Killed

    for out, edit in (("same", {"doc": "Documented otherwise."}), ("edited", {"scale": "0.5"})):
        run_cell(5)
        with pytest.raises(Killed):
            run(config, tmp_path / out, progress_bar=False, on_step=kill_at_3)
        run_cell(6, **edit)
        if out == "same":
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                run(config, tmp_path / out, resume=True, progress_bar=False)
            continue
        with pytest.warns(RuntimeWarning, match=r"the code of method 'cell_edit_test' \(notebook_cell_module_test\.Cell\) "
                                                r"changed since the checkpoint of step 2"):
            run(config, tmp_path / out, resume=True, progress_bar=False)
        assert json.loads((tmp_path / out / "result.json").read_text())["method_code_changed_at"] == [2]


_CELL = '''
import dalib, functools, torch
import torch.nn.functional as F
from dataclasses import dataclass, field
SCALE = {scale}
WEIGHTS = [1.0, {weights}]
lam = {sweep}  # a notebook's loop variable, named as the method's attribute: not the method's code
def helper(x):
    """Doc {doc}."""
    return x * {helper}
class Disc(torch.nn.Module):
    def forward(self, x):
        return x * {disc}
class Lookup:
    def __repr__(self):
        return self.table  # (a repr that raises)
@dataclass(frozen=True)
class Opts:
    names: frozenset = field(default_factory=lambda: frozenset({{"alpha", "beta", "gamma", "delta"}}))
LOOP = [1]
LOOP.append(LOOP)
def make(factor):
    def scaled(x):
        return x * factor
    return scaled
class Base(dalib.Method):
    def base_term(self, x):
        return x * {base}
@dalib.register_method('cell_digest_test')
class Cell(Base):
    lam = {lam}
    scaled = staticmethod(make({closure}))
    table = Lookup()
    opts = Opts()
    loop = LOOP
    @dataclass(frozen=True, kw_only=True)
    class Config:
        w: float = {w}
    def loss(self, batch, out, progress, ce=F.cross_entropy, *, k={k}):
        def inner(z):
            """Nested doc {doc}."""
            return z
        total = SCALE * WEIGHTS[1] * self.lam * self.factor * self.prop * k * Disc()(self.source_loss(batch, out))
        if "{key}" in {{"alpha", "beta", "gamma", "delta"}}:
            total = F.softmax(total, dim=-1) if "{mode}" == "mean" else total
        return {{"total": inner(helper(self.scaled(self.base_term(self.cached(total)))))}}
    @property
    def prop(self):
        return {prop}
    @functools.lru_cache(maxsize=None)
    def cached(self, x):
        return x * {lru}
    @functools.cached_property
    def factor(self):
        return {factor}
    @torch.no_grad()
    def update(self, x):
        return x * {upd}
'''


def _cell_hash(**edits):
    """The code hash of _CELL's method, run as a notebook cell (a module without a source file)."""
    import types

    from dalib.registry import method_code_hash

    values = {"scale": 1.0, "doc": "a", "helper": 2, "lam": 0.5, "w": 1.0, "k": 1.0, "upd": 0.99, "weights": 0.5,
              "disc": 1.0, "factor": 2.0, "sweep": 0.1, "base": 1.0, "closure": 1.0, "key": "alpha", "mode": "mean",
              "prop": 1.0, "lru": 1.0, **edits}
    kernel = types.ModuleType("notebook_digest_module_test")
    sys.modules[kernel.__name__] = kernel
    try:
        exec(compile(_CELL.format(**values), f"<ipython-input-{sorted(edits)}>", "exec"), kernel.__dict__)
        return method_code_hash(kernel.Cell)
    finally:
        del sys.modules[kernel.__name__]
        registry.unregister_method("cell_digest_test")


def test_a_cells_code_hash_sees_what_changes_numbers_and_nothing_else(clean_registry):
    """Each edit below changes what the method computes and had kept its hash (a class attribute,
    a module constant, a list of them, a keyword-only or Config default, a function or network the
    method calls, a decorated method's body, a cached_property's); a function as a default, or a
    set inside an object, had made the same cell hash otherwise in every process; a nested
    docstring is no code, nor a notebook variable named as one of the method's attributes; an
    object whose repr raises, or a list that holds itself, had failed the run."""
    import subprocess

    first = _cell_hash()
    for edit in ({"scale": 3.0}, {"helper": 3}, {"lam": 0.9}, {"w": 2.0}, {"k": 2.0}, {"upd": 0.5}, {"weights": 2.0},
                 {"disc": 3.0}, {"factor": 3.0}, {"base": 2.0}, {"closure": 2.0}, {"key": "omega"}, {"mode": "sum"},
                 {"prop": 2.0}, {"lru": 2.0}):
        assert _cell_hash(**edit) != first, edit
    assert _cell_hash(doc="documented otherwise") == first
    assert _cell_hash(sweep=1.0) == first  # (self.lam is an attribute: the global lam is not read)
    other = subprocess.run([sys.executable, "-c", "import tests.core.test_registry as t; print(t._cell_hash())"],
                           capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "7"},
                           cwd=Path(__file__).parents[2], check=True)
    assert other.stdout.strip() == first  # another process, another hash seed, other addresses
