"""Speed and peak memory of dalib's kernel backends against naive torch, POT and geomloss.

Side by side, in one run, on the same random data (x ~ N(0, I), y ~ N(0.5, I), seed 0):

* ``mmd``: biased MMD² with 5 Gaussian bandwidths (median distance × 2^-2 … 2^2), float32,
  N = M ∈ {1k, 10k, 100k}: dalib dense / blocked / keops, naive dense torch (cdist + exp
  per bandwidth), geomloss ``SamplesLoss("gaussian")`` summed over the 5 bandwidths;
* ``sinkhorn-div``: the debiased Sinkhorn divergence, float32, p = 2, blur = 1 (ε = 1),
  scaling 0.5 (geomloss' schedule: one iteration per ε), N = M ∈ {1k, 2k, 20k}: dalib
  backends against geomloss (tensorized; online = KeOps);
* ``sinkhorn-tol``: the entropic OT cost at ε = 1 run to a marginal error < 1e-6 (POT's
  criterion ‖Pᵀ1 − b‖₂), float64, N = M ∈ {1k, 2k}: dalib (``tol=``) against POT
  ``ot.sinkhorn2(method="sinkhorn_log")`` and a naive log-domain torch loop, the cost
  matrix counted in their time;

each at d = 64 and d = 512. Every case runs in a fresh subprocess: after a small warm-up
(imports, thread pools, KeOps compilation), the peak resident memory is reset
(``/proc/self/clear_refs``) and the case's peak extra memory is ``VmHWM − VmRSS`` before
the call (on CUDA: ``torch.cuda.max_memory_allocated`` growth). Times are the best of up
to 3 runs (1 run when a run takes more than 2 s). Cases that would not fit in memory, or
are hopelessly slow, are recorded as skipped with the reason instead of being run.

    python benchmarks/kernels.py                      # everything (~15 min on 2 cores)
    python benchmarks/kernels.py --quick              # N = 1k / 2k, d = 64: a minute
    python benchmarks/kernels.py --sizes 1000 10000 --dims 64 --losses mmd
    python benchmarks/kernels.py --skip-slow          # drop the baselines that take minutes

Writes benchmarks/results/kernels-{cpu,cuda}.json and .md (``--out`` to change).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _machine import at_least, machine_info, machine_line, output_stem, write_results  # noqa: E402

MMD_SIZES = (1000, 10000, 100000)
SINKHORN_SIZES = (1000, 2000, 20000)
TOL_SIZES = (1000, 2000)
DIMS = (64, 512)
BLUR = 1.0
SCALING = 0.5
TOL = 1e-6
MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)

METHODS = {
    "mmd": ["naive-torch", "geomloss-tensorized", "dalib-dense", "dalib-blocked", "dalib-keops", "dalib-auto"],
    "sinkhorn-div": ["geomloss-tensorized", "geomloss-online", "dalib-dense", "dalib-blocked", "dalib-keops", "dalib-auto"],
    "sinkhorn-tol": ["pot", "naive-torch", "dalib-dense", "dalib-blocked", "dalib-auto"],
}
#: sinkhorn-tol runs at these d unless --dims is given (at d = 512 and ε = 1 the raw
#: N(0, I) costs are ~8x larger: POT needs many times more iterations, minutes per case)
TOL_DIMS = (64,)


class _Shape:
    """What resolve_backend looks at, without allocating the points."""

    def __init__(self, n: int, d: int, itemsize: int, cuda: bool):
        self.shape, self._itemsize, self.is_cuda = (n, d), itemsize, cuda

    def dim(self) -> int:
        return 2

    def element_size(self) -> int:
        return self._itemsize


def _auto_backend(case: dict) -> str:
    from dalib.kernels import resolve_backend

    item = 8 if case["loss"] == "sinkhorn-tol" else 4
    pts = _Shape(case["n"], case["d"], item, case["device"].startswith("cuda"))
    op = {"mmd": "kernel", "sinkhorn-div": "sinkhorn", "sinkhorn-tol": "sinkhorn-tol"}[case["loss"]]
    return resolve_backend("auto", pts, pts, op=op)


# --------------------------------------------------------------------------------------
# what each case would need: used to skip the hopeless ones with a recorded reason
# --------------------------------------------------------------------------------------
def _gb(nbytes: float) -> float:
    return nbytes / 2**30


def _needs(loss: str, method: str, n: int, d: int) -> float:
    """Rough peak extra memory (GB) of a case: the N×M matrices it materialises."""
    pairs = float(n) * n
    if method in ("dalib-blocked", "dalib-keops", "geomloss-online"):
        return _gb(64 * n * d)
    if loss == "mmd":  # 3 distance matrices + exp temporaries, float32
        return _gb(4 * pairs * (5 if method == "naive-torch" else 3))
    if loss == "sinkhorn-div":  # 4 cost matrices + softmin temporaries
        return _gb(4 * pairs * 6)
    # sinkhorn-tol, float64: cost matrix + logsumexp temporaries
    return _gb(8 * pairs * 4)


def _skip_reason(args, loss: str, method: str, n: int, d: int, device: str, avail_gb: float) -> str | None:
    need = _needs(loss, method, n, d)
    if method.startswith("geomloss") and not _have("geomloss"):
        return "geomloss not installed (pip install geomloss; benchmark-only dependency)"
    if method == "pot" and not _have("ot"):
        return "POT not installed"
    if method in ("dalib-keops", "geomloss-online") and not _have("pykeops"):
        return "pykeops not installed"
    if need > 0.6 * avail_gb:
        return f"OOM/skipped (would need ~{need:.0f} GB, {avail_gb:.0f} GB available)"
    if device == "cpu":
        # KeOps on a few CPU cores is far slower than torch (see docs/kernels.md)
        if method in ("dalib-keops", "geomloss-online") and float(n) * n * d > 2000.0**2 * 64 * (8 if loss == "mmd" else 1):
            return "skipped: KeOps on CPU is ~10x slower than torch here; too slow at this size"
        if loss == "sinkhorn-tol" and n > 2000:
            return "skipped: hours to 1e-6 at ε = 1 on CPU"
        if args.skip_slow:
            slow = (
                (loss == "mmd" and method in ("naive-torch", "geomloss-tensorized", "dalib-dense") and n >= 10000)
                or (loss == "sinkhorn-div" and method.startswith("geomloss") and n > 2000)
                or (loss == "sinkhorn-tol" and method in ("pot", "naive-torch"))
                or n * d > 100000 * 64
            )
            if slow:
                return "skipped (--skip-slow)"
        if loss == "sinkhorn-div" and method == "geomloss-tensorized" and n > 2000 and not args.all_baselines:
            return f"skipped: would need ~{need:.0f} GB and minutes (--all-baselines to run)"
        if loss == "mmd" and method == "dalib-dense" and n > 10000:
            return f"OOM/skipped (would need ~{need:.0f} GB)"
        if loss == "sinkhorn-div" and method == "dalib-dense" and n > 8000:
            return f"skipped: caches three N×N costs (~{_gb(12.0 * n * n):.1f} GB); blocked is the backend here"
    return None


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _avail_gb() -> float:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 8.0


# --------------------------------------------------------------------------------------
# the child: one case, fresh process
# --------------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _data(n: int, d: int, dtype, device):
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=torch.float32)
    y = torch.randn(n, d, generator=g, dtype=torch.float32) + 0.5
    return x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)


def _make_fn(case: dict):
    """Return (prepare(x, y) -> state, run(state) -> float) for the case."""
    import torch

    loss, method = case["loss"], case["method"]
    backend = method.split("-", 1)[1] if method.startswith("dalib-") else None

    if loss == "mmd":
        from dalib.kernels import median_bandwidth
        from dalib.losses import mmd

        def prepare(x, y):
            med = median_bandwidth(x, y)
            return x, y, [med * k for k in MULTIPLIERS]

        if backend:
            return prepare, lambda s: float(mmd(s[0], s[1], bandwidths=s[2], backend=backend))
        if method == "naive-torch":

            def naive(s):
                x, y, sig = s
                dxx, dyy, dxy = torch.cdist(x, x) ** 2, torch.cdist(y, y) ** 2, torch.cdist(x, y) ** 2
                total = 0.0
                for sg in sig:
                    g = -0.5 / sg**2
                    total = total + (dxx * g).exp().mean() + (dyy * g).exp().mean() - 2 * (dxy * g).exp().mean()
                return float(total)

            return prepare, naive
        if method == "geomloss-tensorized":
            from geomloss import SamplesLoss

            def geo(s):
                x, y, sig = s
                # SamplesLoss("gaussian") is ½‖α − β‖²_k = ½ MMD² (biased), one bandwidth
                return float(sum(2 * SamplesLoss("gaussian", blur=sg, backend="tensorized")(x, y) for sg in sig))

            return prepare, geo

    if loss == "sinkhorn-div":
        from dalib.losses import sinkhorn

        prepare = lambda x, y: (x, y)  # noqa: E731
        if backend:
            return prepare, lambda s: float(sinkhorn(s[0], s[1], blur=BLUR, scaling=SCALING, backend=backend))
        from geomloss import SamplesLoss

        be = method.split("-", 1)[1]
        fn = SamplesLoss("sinkhorn", p=2, blur=BLUR, scaling=SCALING, debias=True, backend=be)
        return prepare, lambda s: float(fn(s[0], s[1]))

    if loss == "sinkhorn-tol":
        eps = BLUR**2
        if backend:
            from dalib.losses import sinkhorn_solve

            def ours(s):
                r = sinkhorn_solve(s[0], s[1], blur=BLUR, debias=False, scaling=SCALING, tol=TOL, max_iter=100000, backend=backend)
                case["n_iter"], case["marginal_error"] = r.n_iter, r.marginal_error
                return float(r.value)

            return lambda x, y: (x, y), ours
        if method == "pot":
            import numpy as np
            import ot

            def prepare_np(x, y):
                xn, yn = x.cpu().numpy(), y.cpu().numpy()
                return xn, yn, np.full(len(xn), 1 / len(xn)), np.full(len(yn), 1 / len(yn))

            def pot(s):
                xn, yn, a, b = s
                c = ot.dist(xn, yn) / 2  # squared Euclidean / 2: counted in the time
                val, log = ot.sinkhorn2(a, b, c, eps, method="sinkhorn_log", numItermax=100000, stopThr=TOL, log=True)
                case["n_iter"], case["marginal_error"] = int(log.get("niter", -1)), float(log["err"][-1])
                return float(val)  # ⟨P, C⟩ only (POT's sinkhorn2 leaves out the entropy)

            return prepare_np, pot
        if method == "naive-torch":

            def naive(s):
                x, y = s
                c = torch.cdist(x, y) ** 2 / 2  # (N, M)
                n, m = c.shape
                loga = torch.full((n,), -math.log(n), dtype=c.dtype, device=c.device)
                logb = torch.full((m,), -math.log(m), dtype=c.dtype, device=c.device)
                u, v = torch.zeros_like(loga), torch.zeros_like(logb)
                mr = -c / eps
                for it in range(100000):
                    v = logb - torch.logsumexp(mr + u[:, None], 0)
                    u = loga - torch.logsumexp(mr + v[None, :], 1)
                    if it % 10 == 0:
                        err = float(torch.linalg.norm(torch.exp(mr + u[:, None] + v[None, :]).sum(0) - logb.exp()))
                        if err < TOL:
                            break
                p = torch.exp(mr + u[:, None] + v[None, :])
                case["n_iter"], case["marginal_error"] = it + 1, err
                return float((p * c).sum())  # ⟨P, C⟩, as POT

            return lambda x, y: (x, y), naive
    raise ValueError(f"unknown case {case}")


def run_child(case: dict) -> dict:
    import torch

    if case.get("threads"):
        torch.set_num_threads(int(case["threads"]))
    device = case["device"]
    if device.startswith("cuda") and torch.device(device).index is not None:  # cuda:N the current device: the
        torch.cuda.set_device(torch.device(device))  # syncs and memory counters below read it (cuda: the current)
    dtype = torch.float64 if case["loss"] == "sinkhorn-tol" else torch.float32
    prepare, fn = _make_fn(case)
    # warm-up on a small slice: imports, thread pools, KeOps compilation
    xw, yw = _data(min(case["n"], 256), case["d"], dtype, device)
    fn(prepare(xw, yw))
    del xw, yw
    x, y = _data(case["n"], case["d"], dtype, device)
    state = prepare(x, y)
    gc.collect()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_ok = _reset_peak()
        base_kb = _status_kb("VmRSS")
        base_hwm = _status_kb("VmHWM")
    t0 = time.perf_counter()
    value = fn(state)
    if cuda:
        torch.cuda.synchronize()
    first = time.perf_counter() - t0
    if cuda:
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
        mem_note = "torch.cuda.max_memory_allocated growth"
    else:
        hwm = _status_kb("VmHWM")
        peak_mb = (hwm - base_kb) / 1024 if reset_ok else (hwm - base_hwm) / 1024
        mem_note = "VmHWM - VmRSS (peak reset)" if reset_ok else "VmHWM growth (lower bound)"
    times = [first]
    while len(times) < 3 and sum(times) < 4 and first < 2:
        t0 = time.perf_counter()
        fn(state)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    out = {k: case[k] for k in ("loss", "method", "n", "d", "device")}
    out.update(
        status="ok",
        time_s=min(times),
        runs=len(times),
        peak_mb=max(peak_mb, 0.0),
        mem_method=mem_note,
        value=value,
        threads=torch.get_num_threads(),
    )
    for k in ("n_iter", "marginal_error"):
        if k in case:
            out[k] = case[k]
    return out


# --------------------------------------------------------------------------------------
# the parent: plan, spawn, collect, write
# --------------------------------------------------------------------------------------
def _plan(args) -> list[dict]:
    cases = []
    for loss in args.losses:
        sizes = args.sizes or (MMD_SIZES if loss == "mmd" else SINKHORN_SIZES if loss == "sinkhorn-div" else TOL_SIZES)
        if loss == "sinkhorn-tol":
            sizes = [n for n in sizes if n <= (args.tol_max_n or max(TOL_SIZES))]
        dims = args.dims or (TOL_DIMS if loss == "sinkhorn-tol" else DIMS)
        for d in dims:
            for n in sizes:
                for method in METHODS[loss]:
                    if args.methods and method not in args.methods:
                        continue
                    cases.append(
                        {"loss": loss, "method": method, "n": n, "d": d, "device": args.device, "threads": args.threads}
                    )
    return cases


def _run_case(case: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(case)]
    env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # a fixed mmap threshold: every large buffer is fresh pages, so resident memory shows
    # each case's own peak instead of reusing pages freed earlier (glibc's dynamic rule)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    base = {k: case[k] for k in ("loss", "method", "n", "d", "device")}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**base, "status": f"timeout (> {timeout:.0f} s)"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        if proc.returncode in (-9, 137) or "out of memory" in tail[0].lower():
            return {**base, "status": "OOM (killed)"}
        return {**base, "status": f"error: {tail[0][:200]}"}
    return json.loads(lines[-1])


def _fmt_t(r: dict) -> str:
    return f"{r['time_s']:.3g}" if r.get("status") == "ok" else "—"


def _markdown(results: list[dict], info: dict, argv: list[str]) -> str:
    args = " ".join(argv) or "(full run)"
    out = [
        "# Kernel backends: time and peak memory",
        "",
        f"Machine: {machine_line(info)}.",
        "",
        f"Generated by `benchmarks/kernels.py {args}` on {info['date_utc']}. Time: best of ≤ 3 runs, "
        "seconds. Peak: extra resident memory of the call (MB), measured in a fresh process "
        "per case. Speed-up: against the first baseline of the group (naive torch, geomloss "
        "tensorized, POT).",
        "",
        f"* `mmd`: biased MMD², 5 Gaussian bandwidths (median × 2^-2…2^2), float32.",
        f"* `sinkhorn-div`: debiased Sinkhorn divergence, p = 2, blur = {BLUR} (ε = {BLUR**2}), "
        f"scaling = {SCALING} (fixed ε-schedule, as geomloss), float32.",
        f"* `sinkhorn-tol`: entropic OT at ε = {BLUR**2} until the marginal error ‖Pᵀ1 − b‖₂ < {TOL} "
        "(POT's criterion), float64, the cost matrix in the time. POT and naive report ⟨P, C⟩; "
        "dalib reports the entropic objective ⟨P, C⟩ + ε KL(P ‖ a⊗b).",
        "",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["loss"], r["d"], r["n"]), []).append(r)
    for loss in METHODS:
        keys = sorted(k for k in groups if k[0] == loss)
        if not keys:
            continue
        out += [f"## {loss}", "", "| N = M | d | method | time (s) | speed-up | peak (MB) | value | note |", "|---|---|---|---|---|---|---|---|"]
        for key in keys:
            rows = groups[key]
            ref = next((r for r in rows if r.get("status") == "ok" and not r["method"].startswith("dalib")), None)
            for r in rows:
                ok = r.get("status") == "ok"
                speed = f"{ref['time_s'] / r['time_s']:.1f}x" if ok and ref and r is not ref else ""
                note = "" if ok else r.get("status", "")
                if ok and "auto_backend" in r:
                    note = f"auto → {r['auto_backend']}"
                if ok and "n_iter" in r:
                    note = (note + " " if note else "") + f"{r['n_iter']} it, err {r['marginal_error']:.1e}"
                peak = f"{r['peak_mb']:.0f}" if ok else "—"
                val = f"{r['value']:.6g}" if ok else "—"
                out.append(f"| {key[2]} | {key[1]} | {r['method']} | {_fmt_t(r)} | {speed} | {peak} | {val} | {note} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="N = 1k/2k, d = 64 only")
    ap.add_argument("--sizes", type=at_least(1), nargs="+", help="N = M values (replace the defaults of every loss)")
    ap.add_argument("--dims", type=at_least(1), nargs="+", help="feature sizes (default 64 512; sinkhorn-tol: 64)")
    ap.add_argument("--losses", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--methods", nargs="+", choices=sorted({m for ms in METHODS.values() for m in ms}),
                    help="only these methods (e.g. dalib-blocked pot)")
    ap.add_argument("--skip-slow", action="store_true", help="skip the baselines that take minutes")
    ap.add_argument("--all-baselines", action="store_true", help="run geomloss tensorized at 20k too")
    ap.add_argument("--threads", type=at_least(1), default=1,
                    help="torch threads per case (default 1, as the published figures: steadier on a shared machine)")
    ap.add_argument("--timeout", type=at_least(1, float), default=300.0, help="seconds per case (default 300)")
    ap.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output stem (default results/kernels-<device>, -custom for other options)")
    args = ap.parse_args(argv)
    if args.device is not None and args.device != "cpu" and not args.device.startswith("cuda"):
        ap.error(f"argument --device: cpu or cuda[:N], got {args.device!r}")
    cli = list(sys.argv[1:] if argv is None else argv)

    if args.child:
        print(json.dumps(run_child(json.loads(args.child))), flush=True)
        return 0

    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.tol_max_n = None
    if args.quick:
        args.sizes = args.sizes or [1000, 2000]
        args.dims = [64]
        args.tol_max_n = 1000
    gpu = torch.device(args.device) if args.device.startswith("cuda") else None
    if gpu is not None and gpu.index is not None:
        torch.cuda.set_device(gpu)  # (the GPU machine_info names, and whose memory bounds the sizes)
    info = machine_info()
    avail = _avail_gb()
    if gpu is not None:
        avail = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
    results = []
    start = time.time()
    done: dict[tuple, dict] = {}
    for case in _plan(args):
        key = (case["loss"], case["n"], case["d"])
        if case["method"] == "dalib-auto":  # not run again: the figures of what auto picks
            picked = _auto_backend(case)
            ran = done.get(key + (f"dalib-{picked}",))
            r = {**(ran or case), "method": "dalib-auto", "auto_backend": picked}
            if ran is None:
                r["status"] = f"auto → {picked} (not run)"
        else:
            reason = _skip_reason(args, case["loss"], case["method"], case["n"], case["d"], args.device, avail)
            r = {**case, "status": reason} if reason else _run_case(case, args.timeout)
        done[key + (case["method"],)] = r
        results.append(r)
        shown = f"{r['time_s']:.3f} s, {r['peak_mb']:.0f} MB" if r.get("status") == "ok" else r["status"]
        print(f"{case['loss']:13s} N={case['n']:<6d} d={case['d']:<4d} {case['method']:20s} {shown}", flush=True)
    stem = Path(output_stem(ap, args, RESULTS / f"kernels-{'cuda' if args.device.startswith('cuda') else 'cpu'}", args.out,
                            same=("out", "device")))
    stem.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": info,
        "settings": {"blur": BLUR, "scaling": SCALING, "tol": TOL, "multipliers": MULTIPLIERS, "argv": cli},
        "wall_s": round(time.time() - start, 1),
        "results": results,
    }
    print(f"{write_results(stem, payload, _markdown(results, info, cli))} ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
