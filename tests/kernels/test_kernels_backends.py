"""Backend selection, the environment variable, and errors of the kernel functions."""

from __future__ import annotations

import pytest
import torch

import dalib.kernels.backends as backends
from dalib.errors import BackendError, InputError, UnknownNameError
from dalib.kernels import gaussian_matvec, gaussian_mean, resolve_backend, softmin, sqdist


class _FakeCuda:
    """Stands for a CUDA tensor in resolve_backend (which looks at .shape and .is_cuda)."""

    is_cuda = True

    def __init__(self, n):
        self.shape = (n, 3)

    def dim(self):
        return 2


def test_auto_on_cpu_prefers_torch_dense_then_blocked():
    small, big = torch.zeros(100, 3), torch.zeros(5000, 3)
    assert resolve_backend("auto", small, small) == "dense"
    assert resolve_backend(None, small, small) == "dense"
    assert resolve_backend("auto", big, big) == "blocked"
    n = int(backends.CPU_DENSE_MAX_PAIRS**0.5)
    assert resolve_backend("auto", torch.zeros(n, 1), torch.zeros(n, 1)) == "dense"
    assert resolve_backend("auto", torch.zeros(n + 1, 1), torch.zeros(n + 1, 1)) == "blocked"
    # the documented bound itself, 2·512² pairs, in literal sizes (not read from the constant)
    assert resolve_backend("auto", torch.zeros(512, 1), torch.zeros(1024, 1)) == "dense"
    assert resolve_backend("auto", torch.zeros(512, 1), torch.zeros(1025, 1)) == "blocked"


def test_auto_for_sinkhorn_on_cpu_depends_on_dim_and_memory():
    def pts(n, d):
        return torch.zeros(n, d)

    assert resolve_backend("auto", pts(700, 64), pts(700, 64), op="sinkhorn") == "dense"
    assert resolve_backend("auto", pts(2000, 64), pts(2000, 64), op="sinkhorn") == "blocked"
    assert resolve_backend("auto", pts(2000, 64), pts(2000, 64), op="sinkhorn-tol") == "dense"
    assert resolve_backend("auto", pts(3000, 512), pts(3000, 512), op="sinkhorn") == "dense"
    assert resolve_backend("auto", pts(9000, 512), pts(9000, 512), op="sinkhorn") == "blocked"
    # 20k × 20k float32: three cost matrices would take 4.5 GB
    big = torch.empty(20000, 512)
    assert resolve_backend("auto", big, big, op="sinkhorn") == "blocked"
    assert resolve_backend("dense", big, big, op="sinkhorn") == "dense"  # explicit wins
    # the documented edges: d ≥ 256 is dense; three cost matrices over 768 MB are not
    # (7500² float32: 2 plan-sized and 2 self-cost matrices, 900 MB)
    assert resolve_backend("auto", pts(2000, 256), pts(2000, 256), op="sinkhorn") == "dense"
    assert resolve_backend("auto", pts(2000, 255), pts(2000, 255), op="sinkhorn") == "blocked"
    assert resolve_backend("auto", pts(7500, 512), pts(7500, 512), op="sinkhorn") == "blocked"
    assert resolve_backend("auto", pts(6000, 512), pts(6000, 512), op="sinkhorn") == "dense"


def test_auto_on_cuda_uses_keops_above_threshold(monkeypatch):
    pykeops = pytest.importorskip("pykeops")
    monkeypatch.setattr(pykeops.config, "gpu_available", True)
    monkeypatch.setitem(backends._keops_state, "checked", True)
    monkeypatch.setitem(backends._keops_state, "ok", True)
    assert resolve_backend("auto", _FakeCuda(1000), _FakeCuda(1000)) == "dense"
    assert resolve_backend("auto", _FakeCuda(6000), _FakeCuda(6000)) == "keops"
    assert resolve_backend("auto", _FakeCuda(5000), _FakeCuda(5000)) == "keops"  # from 5000² pairs on
    assert resolve_backend("auto", _FakeCuda(4999), _FakeCuda(5000)) == "dense"


def test_keops_without_cuda_toolkit_is_not_used_for_cuda_tensors(monkeypatch):
    # pykeops imports but found no nvrtc / CUDA headers: it runs on the CPU only, and given
    # CUDA tensors it would hand device pointers to CPU code
    pykeops = pytest.importorskip("pykeops")
    monkeypatch.setattr(pykeops.config, "gpu_available", False)
    monkeypatch.setitem(backends._keops_state, "checked", True)
    monkeypatch.setitem(backends._keops_state, "ok", True)
    monkeypatch.setitem(backends._keops_state, "warned", False)
    with pytest.warns(RuntimeWarning, match="no CUDA toolkit.*falls back to 'blocked'"):
        assert resolve_backend("auto", _FakeCuda(6000), _FakeCuda(6000)) == "blocked"
    with pytest.raises(BackendError, match="for CUDA tensors but pykeops found no CUDA toolkit"):
        resolve_backend("keops", _FakeCuda(10), _FakeCuda(10))
    assert resolve_backend("keops", torch.zeros(10, 3), torch.zeros(10, 3)) == "keops"  # CPU tensors: fine


def test_auto_falls_back_with_one_warning_when_keops_missing(monkeypatch):
    monkeypatch.setitem(backends._keops_state, "checked", True)
    monkeypatch.setitem(backends._keops_state, "ok", False)
    monkeypatch.setitem(backends._keops_state, "reason", "pykeops is not installed")
    monkeypatch.setitem(backends._keops_state, "warned", False)
    with pytest.warns(RuntimeWarning, match="falls back to 'blocked'") as rec:
        assert resolve_backend("auto", _FakeCuda(6000), _FakeCuda(6000)) == "blocked"
    assert rec[0].filename == __file__  # the caller's line
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time: no warning
        assert resolve_backend("auto", _FakeCuda(6000), _FakeCuda(6000)) == "blocked"
    with pytest.raises(BackendError, match="pykeops is not installed"):
        resolve_backend("keops", torch.zeros(3, 2))


def test_keops_failure_falls_back_when_auto_raises_when_explicit(monkeypatch):
    from dalib.kernels.backends import with_keops_fallback

    monkeypatch.setitem(backends._keops_state, "warned", False)
    calls = []

    def fn(name):
        calls.append(name)
        if name == "keops":
            raise BackendError("the keops backend failed to run here: g++ not found")
        return name

    with pytest.warns(RuntimeWarning, match="falls back to 'blocked'"):
        assert with_keops_fallback("auto", "keops", fn) == "blocked"
    assert calls == ["keops", "blocked"]
    with pytest.raises(BackendError, match="g[+][+] not found"):
        with_keops_fallback("keops", "keops", fn)
    monkeypatch.setenv("DALIB_KERNEL_BACKEND", "keops")
    with pytest.raises(BackendError):
        with_keops_fallback("auto", "keops", fn)
    assert with_keops_fallback("auto", "dense", fn) == "dense"


def test_env_var_replaces_auto_not_explicit(monkeypatch):
    x = torch.zeros(10, 2)
    monkeypatch.setenv("DALIB_KERNEL_BACKEND", "blocked")
    assert resolve_backend("auto", x, x) == "blocked"
    assert resolve_backend("dense", x, x) == "dense"
    monkeypatch.setenv("DALIB_KERNEL_BACKEND", "Dense ")
    assert resolve_backend("auto", x, x) == "dense"
    monkeypatch.setenv("DALIB_KERNEL_BACKEND", "cuda-magic")
    with pytest.raises(UnknownNameError, match="DALIB_KERNEL_BACKEND"):
        resolve_backend("auto", x, x)


def test_unknown_backend_lists_known_ones():
    with pytest.raises(UnknownNameError, match="known: auto, blocked, dense, keops"):
        resolve_backend("gpu", torch.zeros(2, 2))
    with pytest.raises(UnknownNameError):
        gaussian_mean(torch.zeros(2, 2), torch.zeros(2, 2), 1.0, backend="nope")


def _bad_pairs():
    ok = torch.randn(4, 3)
    nan = ok.clone()
    nan[1, 2] = float("nan")
    inf = ok.clone()
    inf[0, 0] = float("inf")
    return [
        (ok, torch.randn(5, 2), "different feature sizes"),
        (torch.zeros(0, 3), ok, "empty"),
        (ok, torch.zeros(4, 0), "empty"),
        (nan, ok, "NaN"),
        (ok, inf, "NaN or infinite"),
        (torch.full((4, 3), 1e19), ok, "too large for float32 squared distances"),  # ‖x − y‖² would overflow to inf
        (torch.randn(4), ok, "2-D"),
        (ok, [[1.0, 2.0, 3.0]], "torch.Tensor"),
        (ok, torch.randn(4, 3, dtype=torch.complex64), "y holds complex numbers"),  # not cast to real with a warning
    ]


@pytest.mark.parametrize("x, y, msg", _bad_pairs())
def test_bad_inputs_raise_input_error(x, y, msg):
    v = torch.ones(4)
    h = torch.zeros(4)
    for call in (
        lambda: sqdist(x, y),
        lambda: gaussian_mean(x, y, 1.0),
        lambda: gaussian_matvec(x, y, v, 1.0),
        lambda: softmin(x, y, h, 1.0),
    ):
        with pytest.raises(InputError, match=msg):
            call()


def test_values_just_inside_the_range_are_computed_finite():
    # the largest values check_points admits keep every squared distance finite, in float32
    from dalib.losses import mmd

    d = 3
    limit = 0.5 * (torch.finfo(torch.float32).max / d) ** 0.5
    x = torch.full((4, d), 0.99 * limit)
    y = -x
    assert torch.isfinite(sqdist(x, y)).all()
    assert torch.isfinite(mmd(x, y, bandwidths=[limit])).item()
    with pytest.raises(InputError, match="too large"):
        sqdist(x * 1.02, y)
    # a small bandwidth at such values: the blocked tiles' one-GEMM form would add infinities of
    # both signs (NaN); equal points still have kernel 1, far ones 0, as on the dense backend
    pts = torch.tensor([[0.3 * limit] * d, [0.3 * limit] * d, [-0.3 * limit] * d, [-0.3 * limit] * d])
    for backend in ("dense", "blocked"):
        out = gaussian_matvec(pts, pts, torch.ones(4), 0.1, backend=backend)
        assert out.tolist() == [2.0, 2.0, 2.0, 2.0], backend
    assert torch.isfinite(sqdist(x.double() * 1.02, y.double())).all()  # float64 holds them


def test_bad_side_arguments_raise_input_error():
    x, y = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(InputError, match="v must have shape"):
        gaussian_matvec(x, y, torch.ones(4), 1.0)
    with pytest.raises(InputError, match="NaN"):
        gaussian_matvec(x, y, torch.tensor([1.0, float("nan"), 0, 0, 0]), 1.0)
    for bad in (0.0, -1.0, [], [1.0, float("nan")]):
        with pytest.raises(InputError, match="bandwidth|sigmas"):
            gaussian_mean(x, y, bad)
    with pytest.raises(InputError, match="h must have shape"):
        softmin(x, y, torch.zeros(4), 1.0)
    with pytest.raises(InputError, match="NaN"):
        softmin(x, y, torch.tensor([0.0, float("nan"), 0, 0, 0]), 1.0)
    with pytest.raises(InputError, match="eps"):
        softmin(x, y, torch.zeros(5), 0.0)
    with pytest.raises(InputError, match="p must be"):
        softmin(x, y, torch.zeros(5), 1.0, p=0.5)


def test_mixed_dtypes_are_promoted():
    x, y = torch.randn(4, 3), torch.randn(5, 3, dtype=torch.float64)
    assert sqdist(x, y).dtype == torch.float64


def test_what_a_module_prints_on_import_goes_to_stderr(tmp_path, monkeypatch, capsys):
    """pykeops prints its warnings on import (also through POT and geomloss): a run's stdout
    holds its results only."""
    (tmp_path / "chatty_module_for_dalib.py").write_text("print('[KeOps] Warning : no CUDA')\nVALUE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert backends.import_quietly("chatty_module_for_dalib").VALUE == 3
    out, err = capsys.readouterr()
    assert out == "" and "[KeOps] Warning : no CUDA" in err


def test_a_keops_cache_folder_that_cannot_be_written_is_a_reason_not_a_crash(monkeypatch, tmp_path, capsys):
    """pykeops makes its cache folder (~/.cache/keopsVERSION) when imported and writes each
    formula's code there: a read-only home had raised PermissionError from keops_available()
    (and from ``auto`` on CUDA), or glued the error onto KeOps' open progress line, with
    keopscore's tracebacks at exit, as it saved its caches' indexes into the same folder."""
    import atexit
    import errno
    import sys
    import types

    from dalib.kernels._keops import _run

    for key, value in (("checked", False), ("ok", False), ("reason", ""), ("warned", False)):
        monkeypatch.setitem(backends._keops_state, key, value)

    def refused(module):
        raise PermissionError(errno.EACCES, "Permission denied", "/home/me/.cache")

    monkeypatch.setattr(backends, "import_quietly", refused)
    assert backends.keops_available() is False
    reason = ("pykeops cannot write its cache folder (Permission denied: /home/me/.cache): set KEOPS_CACHE_FOLDER to "
              "a folder it can write")
    assert backends.keops_unavailable_reason() == reason
    with pytest.warns(RuntimeWarning, match="KEOPS_CACHE_FOLDER"):
        assert resolve_backend("auto", _FakeCuda(6000), _FakeCuda(6000)) == "blocked"

    from keopscore.utils.Cache import Cache

    def compile_formula():
        return None

    module = types.ModuleType("keopscore._dalib_test_cache")
    module.cache = Cache(compile_formula, use_cache_file=True, save_folder=str(tmp_path))  # saves at exit
    monkeypatch.setitem(sys.modules, module.__name__, module)
    forgotten = []
    monkeypatch.setattr(atexit, "unregister", forgotten.append)  # (the real caches' saves of this process are kept)

    def fails_to_write():
        print("[KeOps] Generating code for formula ... ", end="")
        raise PermissionError(errno.EACCES, "Permission denied", "/home/me/.cache/keops2.3/build/a.cpp")

    with pytest.raises(BackendError) as info:
        _run(fails_to_write)
    assert str(info.value) == ("the keops backend failed to run here: pykeops cannot write its cache folder (Permission "
                               "denied: /home/me/.cache/keops2.3/build/a.cpp): set KEOPS_CACHE_FOLDER to a folder it can write")
    assert capsys.readouterr().err == "[KeOps] Generating code for formula ... \n"
    assert module.cache.save_cache in forgotten  # its save at exit, into the same folder
    monkeypatch.undo()
    atexit.unregister(module.cache.save_cache)  # (the test's own cache: not saved at this process's exit)


def test_a_cache_folder_of_the_users_naming_and_a_process_without_a_home(monkeypatch, tmp_path):
    """KEOPS_CACHE_FOLDER=/scratch/kc read-only: the refusal names no "keops", and had passed
    through as a bare PermissionError. With HOME unset and a user id the password database does
    not know (a container's), pykeops made a folder named "~" in the working directory and
    compiled there; torchvision's weight cache did the same. Other system errors (no memory to
    fork the compiler) are not the cache's; the variable set afterwards in the same process, or
    torch.hub.set_dir(), is heard."""
    import errno
    import os
    import pwd

    from dalib.errors import CheckpointError
    from dalib.kernels._keops import _run
    from dalib.models.backbones import build_backbone

    for key, value in (("checked", True), ("ok", True), ("reason", ""), ("warned", False)):
        monkeypatch.setitem(backends._keops_state, key, value)
    monkeypatch.setattr(backends, "forget_keops_cache_saves", lambda: None)

    for code, words in ((errno.EACCES, "Permission denied"), (errno.EROFS, "Read-only file system"),
                        (errno.ENOSPC, "No space left on device")):
        def refused(code=code, words=words):
            raise OSError(code, words, "/scratch/kc/Linux_p3.11/5aa762f704.cpp")

        with pytest.raises(BackendError, match=rf"cannot write its cache folder \({words}: /scratch/kc/.*\): set "
                                                "KEOPS_CACHE_FOLDER"):
            _run(refused)

    def out_of_memory():  # (fork of the compiler failing, say): no cache folder's fault
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    with pytest.raises(OSError, match="Cannot allocate memory") as info:
        _run(out_of_memory)
    assert not isinstance(info.value, BackendError)

    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("KEOPS_CACHE_FOLDER", raising=False)
    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)

    def unknown(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    known = pwd.getpwuid(os.getuid())
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: known)
    assert not backends.no_home()  # HOME unset, the user known: ~ is their folder
    monkeypatch.setattr(pwd, "getpwuid", unknown)
    assert backends.no_home()
    monkeypatch.chdir(tmp_path)
    for key, value in (("checked", False), ("ok", False), ("reason", "")):
        monkeypatch.setitem(backends._keops_state, key, value)
    assert backends.keops_available() is False
    assert backends.keops_unavailable_reason() == (
        "pykeops keeps its compiled formulas under the home folder, and this process has none (HOME is unset, and "
        "this user id has no entry in the password database): set KEOPS_CACHE_FOLDER to a folder it can write")
    with pytest.raises(CheckpointError, match=r"^torchvision keeps the ImageNet weights under the home folder, and this "
                                              r"process has none \(HOME is unset.*\): set TORCH_HOME"):
        build_backbone("resnet18", (3, 32, 32), pretrained="imagenet")
    assert os.listdir(tmp_path) == []  # no folder named "~"
    monkeypatch.setenv("KEOPS_CACHE_FOLDER", str(tmp_path / "kc"))  # as the reason says, in this process
    assert backends.keops_available() is True
    import torch
    from torchvision.models import resnet18

    hub = tmp_path / "hub"  # torch.hub.set_dir(): where the weights are, with no variable set
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(resnet18().state_dict(), hub / "checkpoints" / "resnet18-f37072fd.pth")  # (the file name torchvision asks)
    from dalib.models import backbones as nets

    monkeypatch.setattr(nets, "_check_hash", lambda path: None)  # (not torchvision's file: its hash is another)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    assert build_backbone("resnet18", (3, 32, 32), pretrained="imagenet")[1] == 512
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # or XDG_CACHE_HOME, which torch reads $XDG_CACHE_HOME/torch/hub of
    (tmp_path / "xdg" / "torch").mkdir(parents=True)
    hub.rename(tmp_path / "xdg" / "torch" / "hub")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build_backbone("resnet18", (3, 32, 32), pretrained="imagenet")[1] == 512


@pytest.mark.parametrize("keopscore_layout", ["2.3", "2.2"])
def test_a_compiled_read_only_keops_cache_has_its_saves_at_exit_forgotten(monkeypatch, keopscore_layout):
    """A cache compiled beforehand (into a container image) and mounted read-only works, but each
    of keopscore's index saves at exit printed a traceback after every run. keopscore 2.2 (which
    dalib accepts) has its get_build_folder beside the config module, not on a config object:
    reading it there had failed unsaid, and neither the saves at exit nor the whole saves were set."""
    import os
    import types

    pytest.importorskip("pykeops")
    if keopscore_layout == "2.2":
        import keopscore

        monkeypatch.setattr(keopscore, "config", types.ModuleType("keopscore.config"))
        monkeypatch.setattr(keopscore, "get_build_folder", lambda: "/compiled/keops", raising=False)
    for key, value in (("checked", False), ("ok", False), ("reason", "")):
        monkeypatch.setitem(backends._keops_state, key, value)
    forgotten = []
    monkeypatch.setattr(backends, "forget_keops_cache_saves", lambda: forgotten.append(1))
    for writable in (True, False):  # (read-only: readable, not writable)
        monkeypatch.setattr(os, "access", lambda path, mode, writable=writable: writable or mode != os.W_OK)
        monkeypatch.setitem(backends._keops_state, "checked", False)
        assert backends.keops_available() is True
        assert len(forgotten) == (0 if writable else 1)


def test_a_damaged_keops_cache_index_is_set_aside_and_built_again(monkeypatch, tmp_path):
    """keopscore loads the indexes of its cache (pickles) as pykeops is imported, and writes them
    in place at exit: a process stopped then, or a disk that filled (CI's did), left a truncated
    file, and every later import failed with pickle's traceback, through `dalib run` too. The file
    is set aside, with a warning naming it, and the import made again; a folder that will not let
    it be set aside is one line that says what to delete."""
    import atexit
    import os
    import pickle
    import sys

    pytest.importorskip("pykeops")
    from keopscore.utils.Cache import Cache, Cache_partial

    made = []

    def compile_formula():
        return None

    class Loader:  # (a Cache_partial's class)
        params = None

    folder = str(tmp_path)
    whole = pickle.dumps({"formula": "params"})

    import types

    module = types.ModuleType("keopscore._dalib_test_indexes")  # where keopscore keeps them: module globals
    monkeypatch.setitem(sys.modules, module.__name__, module)

    def importing():  # what pykeops' import does with its two indexes
        made.append(Cache(compile_formula, use_cache_file=True, save_folder=folder))
        module.dll = made[-1]
        made.append(Cache_partial(Loader, use_cache_file=True, save_folder=folder))
        module.loader = made[-1]

    monkeypatch.setattr(backends, "import_quietly", lambda module: importing())
    unregister = atexit.unregister
    saves = []
    dll, loader = tmp_path / "compile_formula_cache.pkl", tmp_path / "Loader_cache.pkl"
    try:
        dll.write_bytes(whole[:-3])  # truncated as it was written
        loader.write_bytes(b"")  # its room refused as it was written
        for key, value in (("checked", False), ("ok", False), ("reason", "")):
            monkeypatch.setitem(backends._keops_state, key, value)
        with pytest.warns(RuntimeWarning) as caught:
            assert backends.keops_available() is True
        assert [str(w.message) for w in caught if w.category is RuntimeWarning] == [
            f"dalib.kernels: pykeops's cache index {dll} was damaged (UnpicklingError: pickle data was truncated), as "
            "when a process is stopped, or the disk is full, while it is saved; set aside as "
            "compile_formula_cache.pkl.damaged, and KeOps builds it again",
            f"dalib.kernels: pykeops's cache index {loader} was damaged (EOFError: Ran out of input), as when a process "
            "is stopped, or the disk is full, while it is saved; set aside as Loader_cache.pkl.damaged, and KeOps "
            "builds it again"]
        assert sorted(os.listdir(tmp_path)) == ["Loader_cache.pkl.damaged", "compile_formula_cache.pkl.damaged"]
        assert made[-2].library == {} and made[-1].library_params == {}  # (built again, as formulas run)
        saves = [backends._whole_saves[id(cache)] for cache in made[-2:]]  # in place of keopscore's own saves

        dll.write_bytes(whole[:-3])
        for key, value in (("checked", False), ("ok", False), ("reason", "")):
            monkeypatch.setitem(backends._keops_state, key, value)

        def refused(src, dst):
            raise PermissionError(13, "Permission denied", src)

        monkeypatch.setattr(os, "replace", refused)  # (a cache compiled beforehand, read-only)
        forgotten = []
        monkeypatch.setattr(atexit, "unregister", forgotten.append)
        assert backends.keops_available() is False
        assert module.dll.save_cache in forgotten  # read before the damaged one: not saved at exit, in place
        assert backends.keops_unavailable_reason() == (
            f"pykeops cannot read its cache index {dll} (UnpicklingError: pickle data was truncated) nor set it aside "
            "(Permission denied): delete that file, and KeOps builds it again")
        with pytest.raises(BackendError, match=r"^kernel backend 'keops' requested \(argument\) but pykeops cannot "
                                               r"read its cache index .*: delete that file"):
            resolve_backend("keops", torch.zeros(2, 1), torch.zeros(2, 1))
        assert dll.read_bytes() == whole[:-3]  # left as it was

        def broken():  # any other failure of the import is its own
            raise RuntimeError("keopscore: no compiler")

        monkeypatch.setattr(backends, "import_quietly", lambda module: broken())
        with pytest.raises(RuntimeError, match="no compiler"):
            backends.import_keops()
    finally:
        monkeypatch.setattr(atexit, "unregister", unregister)
        for cache in made:
            atexit.unregister(cache.save_cache)  # (the test's own caches: not saved at this process's exit)
        for save in saves:
            atexit.unregister(save)


def test_keops_cache_indexes_are_saved_whole_or_not_at_all(tmp_path):
    """A save at exit that the disk refuses half-way (or a process stopped there) kept nothing of
    the index: keopscore had truncated it first. The old index stays whole, no temporary file is
    left, and the refusal is one line, not an ignored exception's traceback."""
    import os
    import pickle
    import re
    import subprocess
    import sys

    pytest.importorskip("pykeops")
    env = dict(os.environ, KEOPS_CACHE_FOLDER=str(tmp_path / "kc"))
    imports = "from dalib.kernels.backends import keops_available\nassert keops_available()\n"
    first = subprocess.run([sys.executable, "-c", imports], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    (folder,) = (tmp_path / "kc").iterdir()
    indexes = sorted(folder.glob("*.pkl"))
    assert [p.name for p in indexes] == ["LoadKeOps_cpp_class_cache.pkl", "get_keops_dll_impl_cache.pkl"]
    before = {p: p.read_bytes() for p in indexes}
    assert all(isinstance(pickle.loads(data), dict) for data in before.values())

    full = imports + ("import errno, pickle\n"
                      "def dump(obj, f):\n"
                      "    f.write(b'half an index')\n"
                      "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
                      "pickle.dump = dump\n")
    second = subprocess.run([sys.executable, "-c", full], env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "Traceback" not in second.stderr and "Exception ignored" not in second.stderr
    said = sorted(line for line in second.stderr.splitlines() if line.startswith("dalib:"))
    assert len(said) == len(indexes)
    for line, p in zip(said, indexes):
        assert re.fullmatch(rf"dalib: pykeops's cache index was not saved: cannot write {re.escape(str(p))} \(No space "
                            r"left on device; \d+ MiB free on its disk\); the file as it was is kept", line), line
    assert {p: p.read_bytes() for p in indexes} == before
    assert sorted(p.name for p in folder.iterdir() if p.suffix != ".so") == sorted(p.name for p in indexes)
