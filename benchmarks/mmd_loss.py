"""Speed of the MMD² loss at training batch sizes: dalib's ``mmd`` against skada's
``dan_loss`` and plain torch, one forward and backward pass as a training step takes it.

Side by side, in one run, on the same data (seed 0): ``x ~ N(0, I_d)``, ``y ~ N(0.5, I_d)``,
float32, B samples per domain (B ∈ {32, 64, 128, 256, 512}), d ∈ {64, 256}, gradients with
respect to both. Two groups:

* ``median per call`` (how the losses train: the bandwidths follow the features, so they
  are recomputed on every mini-batch):
  - ``dalib``: ``mmd(x, y, estimator="unbiased", backend="dense")`` as the ``mmd`` plugin calls
    it: σ = the median pairwise distance of the pooled batch × 2^-2 … 2^2;
  - ``dalib-auto``: the same with ``backend="auto"`` (the loss's default);
  - ``torch``: the textbook form, ``torch.cdist`` of the pooled batch, its median, the same five
    Gaussian kernels, biased;
  - ``skada``: ``skada.deep.losses.dan_loss(x, y)`` with its defaults: 33 bandwidths from the
    median distance within the source batch, and its kernel ``exp(−‖x − y‖/σ)``;
* ``bandwidths given`` (the five σ's fixed beforehand, not timed): ``dalib`` and ``torch`` as
  above, and ``skada``'s ``dan_loss(x, y, sigmas)``: the same number of kernels, its own
  kernel ``exp(−‖x − y‖/σ)`` (its values differ from the Gaussian ones).

Each case runs ``--repeats`` times per round; the rounds alternate the cases, so that a
load that comes and goes on a shared machine slows them alike. The table gives each case's
best time per call and dalib's speed-up over the others.

    python benchmarks/mmd_loss.py                 # ~3 min on 2 cores
    python benchmarks/mmd_loss.py --sizes 64 --dims 256 --rounds 3

Writes benchmarks/results/mmd_loss.json and .md (``--out`` to change).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)
GROUPS = {"median per call": ("dalib", "dalib-auto", "torch", "skada"), "bandwidths given": ("dalib", "torch", "skada")}


def _torch_mmd(x, y, sigmas):
    """The textbook biased MMD² of the pooled batch: one cdist, five Gaussian kernels."""
    import torch

    n = x.shape[0]
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z) ** 2  # (2n, 2n)
    if sigmas is None:
        with torch.no_grad():
            iu = torch.triu_indices(2 * n, 2 * n, offset=1, device=z.device)
            med = float(d2[iu[0], iu[1]].median().sqrt())
        sigmas = [med * k for k in MULTIPLIERS]
    k = sum(torch.exp(d2 / (-2.0 * s * s)) for s in sigmas)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def loss_fn(group: str, case: str, sigmas: list[float]):
    """``f(x, y) -> scalar tensor`` for one case."""
    given = sigmas if group == "bandwidths given" else None
    if case.startswith("dalib"):
        from dalib.losses import mmd

        backend = "auto" if case == "dalib-auto" else "dense"
        return lambda x, y: mmd(x, y, bandwidths=given, estimator="unbiased", backend=backend)
    if case == "torch":
        return lambda x, y: _torch_mmd(x, y, given)
    from skada.deep.losses import dan_loss

    if given is None:
        return lambda x, y: dan_loss(x, y)
    return lambda x, y: dan_loss(x, y, sigmas=given)


def time_call(fn, x, y, repeats: int) -> tuple[float, float]:
    """Best seconds per forward + backward over ``repeats`` calls in a row, and the loss value."""
    import torch

    xs, ys = x.clone().requires_grad_(), y.clone().requires_grad_()
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    best, value = float("inf"), float("nan")
    for _ in range(repeats):
        xs.grad = ys.grad = None
        sync()
        t0 = time.perf_counter()
        loss = fn(xs, ys)
        loss.backward()
        sync()
        best = min(best, time.perf_counter() - t0)
        value = float(loss.detach())
    return best, value


def main() -> None:
    from _machine import at_least, command, machine_info, machine_line, output_stem, write_results
    from kernels import _data as same_data  # kernels.py's data: x ~ N(0, I), y ~ N(0.5, I), seed 0

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=at_least(2), nargs="+", default=[32, 64, 128, 256, 512],
                    help="samples per domain")
    ap.add_argument("--dims", type=at_least(1), nargs="+", default=[64, 256])
    ap.add_argument("--rounds", type=at_least(1), default=5, help="alternating rounds of the cases")
    ap.add_argument("--repeats", type=at_least(1), default=20, help="calls per case and round")
    ap.add_argument("--threads", type=at_least(1), default=1, help="torch threads")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--out", default=None, help="output stem (default: results/mmd_loss, -custom for other options)")
    args = ap.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: no CUDA device here")
    out = output_stem(ap, args, HERE / "results" / ("mmd_loss" if args.device == "cpu" else "mmd_loss-cuda"),
                      args.out, same=("out",))
    torch.set_num_threads(args.threads)
    from dalib.kernels import median_bandwidth

    rows = []
    for d in args.dims:
        for n in args.sizes:
            x, y = same_data(n, d, torch.float32, args.device)
            med = median_bandwidth(x, y)
            sigmas = [med * k for k in MULTIPLIERS]
            cases = [(g, c) for g, names in GROUPS.items() for c in names]
            fns = {gc: loss_fn(*gc, sigmas) for gc in cases}
            for gc in cases:  # warm-up: imports, thread pools, allocator
                time_call(fns[gc], x, y, 2)
            best = {gc: float("inf") for gc in cases}
            values = {}
            for _ in range(args.rounds):
                for gc in cases:
                    seconds, values[gc] = time_call(fns[gc], x, y, args.repeats)
                    best[gc] = min(best[gc], seconds)
            for group, names in GROUPS.items():
                row = {"n": n, "d": d, "group": group,
                       "ms": {c: 1e3 * best[(group, c)] for c in names},
                       "value": {c: values[(group, c)] for c in names}}
                row["speedup"] = {c: row["ms"][c] / row["ms"]["dalib"] for c in names if c != "dalib"}
                rows.append(row)
                print(f"B={n} d={d} {group}: " + ", ".join(f"{c} {ms:.3f} ms" for c, ms in row["ms"].items()),
                      flush=True)
    info = machine_info()
    results = {"machine": info, "device": args.device, "threads": args.threads, "rounds": args.rounds,
               "repeats": args.repeats, "rows": rows, "command": command("mmd_loss.py", sys.argv[1:])}
    print(write_results(out, results, markdown(results, machine_line(info))))


def markdown(res: dict, machine: str) -> str:
    lines = [
        "# MMD² loss at training batch sizes: forward and backward",
        "",
        f"Machine: {machine}. Device: {res['device']}, {res['threads']} torch thread(s).",
        "",
        "B samples per domain, x ~ N(0, I), y ~ N(0.5, I), float32; one forward and backward "
        "pass with respect to both. Best of "
        f"{res['rounds']} alternating rounds of {res['repeats']} calls, ms per call; speed-up: "
        "the other's time over dalib's (dense, as the `mmd` plugin calls it).",
        "",
        "* *median per call*: the bandwidths are recomputed on every call, as in training. dalib: "
        "five Gaussian kernels, σ = median pooled distance × 2^-2…2^2, unbiased estimator; torch: "
        "the same kernels from one `torch.cdist` of the pooled batch and its median, biased; skada: "
        "`dan_loss` with its defaults (33 bandwidths from the median within the source batch, kernel "
        "exp(−‖x − y‖/σ)).",
        "* *bandwidths given*: the five σ's fixed beforehand; skada's `dan_loss(x, y, sigmas)` computes "
        "the same number of kernels of its own form exp(−‖x − y‖/σ), so its values differ.",
        "",
    ]
    for group, names in GROUPS.items():
        lines += [f"## {group}", "",
                  "| B | d | " + " | ".join(f"{c} (ms)" for c in names) + " | "
                  + " | ".join(f"vs {c}" for c in names if c != "dalib") + " |",
                  "|---|---|" + "---|" * (2 * len(names) - 1)]
        for row in res["rows"]:
            if row["group"] != group:
                continue
            lines.append(f"| {row['n']} | {row['d']} | " + " | ".join(f"{row['ms'][c]:.3f}" for c in names) + " | "
                         + " | ".join(f"{row['speedup'][c]:.2f}x" for c in names if c != "dalib") + " |")
        lines.append("")
    lines += ["Reproduce:", "", "```", res["command"], "```"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
