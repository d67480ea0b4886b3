"""CPU training speed of the common runner: NCHW (contiguous) against channels_last weights.

On the CPU the runner puts a model's 4-d weights in the channels_last (NHWC) layout
(``dalib.runner.CPU_MEMORY_FORMAT``), so that oneDNN's convolutions, pooling and batch
norm work without re-laying out every activation. This script measures that choice side by
side, in one run, with the two layouts interleaved (A, B, A, B, ...):

* **step**: one training step as the runner takes it (forward of source + target batch,
  cross-entropy, backward, SGD with momentum), on random data: LeNet on 1x16x16 digits with
  64 + 64 samples, ResNet-50 on 3x224x224 images with 4 + 4. Median over the timed steps.
* **run**: ``dalib.run`` end to end (data loading, training, the final evaluation on both
  domains) for ``source_only`` and ``dann`` on ``digits-full`` MNIST -> USPS, ``--steps``
  steps, once per layout and repeat. Its target accuracy is printed beside the time: the
  layouts compute the same functions, in a different order of floating-point sums.

Each case runs with 1 and with 2 torch threads (``dalib bench --jobs 2`` runs one thread per
job).

    python benchmarks/channels_last.py --data-root ../shared/data      # about 7 min on 2 cores

Writes benchmarks/results/channels_last.json and .md (``--out`` to change).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import dalib
from dalib import runner
from dalib.models import build_model

HERE = Path(__file__).resolve().parent
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
STEP_CASES = [  # (arch, input shape, samples per domain, timed steps)
    ("lenet", (1, 16, 16), 64, 60),
    ("resnet50", (3, 224, 224), 4, 6),
]


def time_steps(arch: str, shape: tuple[int, ...], per_domain: int, steps: int, layout: str) -> float:
    """Median seconds of one runner-like training step."""
    torch.manual_seed(0)
    model = build_model(arch, shape, 10).to(memory_format=LAYOUTS[layout])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(2 * per_domain, *shape)
    y = torch.randint(0, 10, (per_domain,))
    model.train()
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out.logits[:per_domain], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 3:  # the first steps allocate and pick oneDNN kernels
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_run(method: str, steps: int, data_root: str | None, layout: str) -> dict:
    previous, runner.CPU_MEMORY_FORMAT = runner.CPU_MEMORY_FORMAT, LAYOUTS[layout]
    try:
        cfg = dalib.RunConfig(method=method, dataset="digits-full", src="mnist", tgt="usps", steps=steps,
                              seed=0, device="cpu", data_root=data_root)
        res = dalib.run(cfg, None, progress_bar=False)
    finally:
        runner.CPU_MEMORY_FORMAT = previous
    return {"seconds": res.seconds, "target_accuracy": res.target_accuracy}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None, help="folder holding digits-full (default ../shared/data)")
    from _machine import at_least, command, machine_info, machine_line, output_stem, write_results

    ap.add_argument("--steps", type=at_least(1), default=400, help="steps of each end-to-end run")
    ap.add_argument("--repeat", type=at_least(1), default=2, help="end-to-end runs per layout and thread count")
    ap.add_argument("--threads", type=at_least(1), nargs="+", default=[1, 2])
    ap.add_argument("--out", default=None, help="output stem (default: results/channels_last, -custom for other options)")
    args = ap.parse_args()
    out = output_stem(ap, args, HERE / "results" / "channels_last", args.out)

    results: dict = {"machine": machine_info(), "steps": [], "runs": [], "run_steps": args.steps}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for arch, shape, per_domain, n in STEP_CASES:
            row = {"arch": arch, "input": list(shape), "batch": f"{per_domain} + {per_domain}", "threads": threads}
            for layout in LAYOUTS:
                row[layout] = time_steps(arch, shape, per_domain, n, layout)
            row["speedup"] = row["nchw"] / row["channels_last"]
            print(f"step {arch} threads={threads}: {row['nchw'] * 1e3:.1f} ms -> "
                  f"{row['channels_last'] * 1e3:.1f} ms ({row['speedup']:.2f}x)", flush=True)
            results["steps"].append(row)
        for method in ("source_only", "dann"):
            row = {"method": method, "threads": threads, **{k: [] for k in LAYOUTS}}
            for _ in range(args.repeat):
                for layout in LAYOUTS:
                    row[layout].append(time_run(method, args.steps, args.data_root, layout))
            best = {k: min(r["seconds"] for r in row[k]) for k in LAYOUTS}
            row["speedup"] = best["nchw"] / best["channels_last"]
            print(f"run {method} threads={threads}: {best['nchw']:.1f} s -> {best['channels_last']:.1f} s "
                  f"({row['speedup']:.2f}x)", flush=True)
            results["runs"].append(row)

    results["command"] = command("channels_last.py", sys.argv[1:])
    print(write_results(out, results, markdown(results, machine_line(results["machine"]))))


def markdown(res: dict, machine: str) -> str:
    lines = [
        "# CPU training speed: NCHW against channels_last",
        "",
        f"Machine: {machine}.",
        "",
        "The runner trains on the CPU with the model's 4-d weights in channels_last "
        "(`dalib.runner.CPU_MEMORY_FORMAT`). Both layouts measured side by side, interleaved, in one run.",
        "",
        "## One training step (median)",
        "",
        "| backbone | input | batch (source + target) | threads | NCHW (ms) | channels_last (ms) | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["steps"]:
        lines.append(f"| {r['arch']} | {'x'.join(map(str, r['input']))} | {r['batch']} | {r['threads']} | "
                     f"{r['nchw'] * 1e3:.1f} | {r['channels_last'] * 1e3:.1f} | {r['speedup']:.2f}x |")
    lines += [
        "",
        f"## `dalib.run` end to end: digits-full MNIST -> USPS, {res['run_steps']} steps, LeNet, 64 + 64 "
        "(best of the repeats; target accuracy of each repeat)",
        "",
        "| method | threads | NCHW (s) | channels_last (s) | speed-up | target acc. NCHW | target acc. channels_last |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        best = {k: min(x["seconds"] for x in r[k]) for k in LAYOUTS}
        acc = {k: ", ".join(f"{x['target_accuracy']:.2f}" for x in r[k]) for k in LAYOUTS}
        lines.append(f"| {r['method']} | {r['threads']} | {best['nchw']:.1f} | {best['channels_last']:.1f} | "
                     f"{r['speedup']:.2f}x | {acc['nchw']} | {acc['channels_last']} |")
    lines += [
        "",
        "The two layouts compute the same network; their accuracies differ only through the order of "
        "floating-point sums, which training amplifies, adversarial training most: compare the "
        "differences with the spread over seeds in the accuracy suites. Reproduce:",
        "",
        "```",
        res.get("command", f"python benchmarks/channels_last.py --steps {res['run_steps']} --data-root ../shared/data"),
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
