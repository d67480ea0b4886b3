"""Deep training speed on the CPU: dalib's runner against skada's deep methods, side by side.

Both toolkits train the same network (dalib's LeNet: conv net, 256-d bottleneck, linear head)
on the same data (``digits-full`` MNIST -> USPS, 15000 + 9298 images of 1x16x16) with the same
batches (64 source + 64 target samples per step) and the same optimizer (SGD, Nesterov momentum
0.9, weight decay 1e-3, lr 0.01), for the steps of one skada epoch (its sampler's
``max(N_s, N_t) // 64`` steps). Pairs, each dalib method beside skada's form of it:

=============  ==============  ==========================================================
dalib          skada           what each step computes beyond the source cross-entropy
=============  ==============  ==========================================================
source_only    SourceOnly      nothing
dann           DANN            domain discriminator (256 -> 100 -> 1) behind a gradient reversal
coral          DeepCoral       CORAL distance of the bottleneck features
mmd            DAN             multi-kernel MMD of the bottleneck features
ot             DeepJDOT        exact OT plan of the batch on the joint feature + label cost
=============  ==============  ==========================================================

The cases alternate (dalib, skada, dalib, skada, ...) and each keeps the best of ``--repeat``
runs. **Training time** is the training loop alone: ``RunResult.seconds`` for dalib (batches,
forward, losses, backward, updates), ``NeuralNet.fit`` for skada (the same, plus building its
dataset and sampler). **End to end** adds what a user waits for around it: for dalib,
``dalib.run`` whole (reading the data files, building the model, the final evaluation on both
domains); for skada, from arrays already in memory, ``fit`` and ``predict`` on both domains.
Target accuracy is printed as context only: the toolkits' schedules differ (dalib decays the
learning rate and ramps DANN's reversal coefficient; skada keeps both constant), so one epoch's
accuracy is no race.

skada's DANN is given a discriminator that ends in a sigmoid: its default ``DomainClassifier``
(skada 0.6) ends in a softmax over a single output, which is 1 for every input, so its domain
loss has no gradient (``--check-skada-default`` shows it) and DANN would train as source-only.

    python benchmarks/deep_speed.py --data-root ../shared/data    # about 10 min on 2 cores

Needs skada and skorch (``pip install -e ".[bench]"``). Writes benchmarks/results/deep_speed.json
and .md (``--out`` to change).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import dalib
from dalib.data import load_domain
from dalib.models import build_model

HERE = Path(__file__).resolve().parent
BATCH = 64
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-3
#: dalib method -> skada estimator, and what dalib's method is configured with to match it
PAIRS = {
    "source_only": ("SourceOnly", {}),
    "dann": ("DANN", {"hidden": 100, "hidden_layers": 1}),  # skada's DANN discriminator: 256 -> 100 -> 1
    "coral": ("DeepCoral", {}),
    "mmd": ("DAN", {}),
    "ot": ("DeepJDOT", {}),
}


class _Logits(nn.Module):
    """dalib's network as skada wants it: the logits out, the bottleneck a named layer."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.net = model

    def forward(self, x: torch.Tensor, sample_weight: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x).logits


class _Discriminator(nn.Module):
    """skada's DANN discriminator (Linear 100, BatchNorm, ReLU, Linear 1) behind its gradient
    reversal layer, ending in a sigmoid, as its BCE domain loss expects."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_dim, 100), nn.BatchNorm1d(100), nn.ReLU(), nn.Linear(100, 1),
                                    nn.Sigmoid())

    def forward(self, x: torch.Tensor, sample_weight: torch.Tensor | None = None) -> torch.Tensor:
        from skada.deep.modules import GradientReversalLayer

        return self.layers(GradientReversalLayer.apply(x, 1.0)).squeeze(-1)


def skada_steps(n_s: int, n_t: int) -> int:
    """The steps of one epoch of skada's domain-balanced sampler (``max_samples="max"``)."""
    return max(n_s - n_s % BATCH, n_t - n_t % BATCH) // BATCH


def run_dalib(method: str, steps: int, data_root: str | None, seed: int) -> dict:
    t0 = time.perf_counter()
    cfg = dalib.RunConfig(method=method, dataset="digits-full", src="mnist", tgt="usps", steps=steps, seed=seed,
                          device="cpu", data_root=data_root, batch_size=BATCH, lr=LR, momentum=MOMENTUM,
                          weight_decay=WEIGHT_DECAY, method_config=PAIRS[method][1])
    res = dalib.run(cfg, None, progress_bar=False)
    return {"train_s": res.seconds, "total_s": time.perf_counter() - t0, "target_accuracy": res.target_accuracy}


def run_skada(method: str, src, tgt, seed: int) -> dict:
    import skada.deep as sd

    torch.manual_seed(seed)
    np.random.seed(seed)
    t0 = time.perf_counter()
    module = _Logits(build_model("lenet", tuple(src.input_shape), src.num_classes))
    name = PAIRS[method][0]
    common = dict(batch_size=BATCH, max_epochs=1, optimizer=torch.optim.SGD, lr=LR, optimizer__momentum=MOMENTUM,
                  optimizer__nesterov=True, optimizer__weight_decay=WEIGHT_DECAY, train_split=None, verbose=0,
                  device="cpu")
    if name == "SourceOnly":
        net = sd.SourceOnly(module, **common)
    elif name == "DANN":
        net = sd.DANN(module, layer_name="net.bottleneck", domain_classifier=_Discriminator(module.net.features_dim),
                      **common)
    else:
        net = getattr(sd, name)(module, layer_name="net.bottleneck", **common)
    xs, xt = src.x.numpy(), tgt.x.numpy()
    x = np.concatenate([xs, xt])
    y = np.concatenate([src.y.numpy(), np.full(len(xt), -1, dtype=np.int64)])
    domain = np.concatenate([np.ones(len(xs), dtype=np.int64), np.full(len(xt), -2, dtype=np.int64)])
    t1 = time.perf_counter()
    net.fit(x, y, sample_domain=domain)
    train = time.perf_counter() - t1
    pred_t = net.predict(xt, sample_domain=np.full(len(xt), -2, dtype=np.int64))
    net.predict(xs, sample_domain=np.ones(len(xs), dtype=np.int64), allow_source=True)
    total = time.perf_counter() - t0
    return {"train_s": train, "total_s": total, "target_accuracy": 100.0 * float((pred_t == tgt.y.numpy()).mean())}


def check_skada_default() -> dict:
    """Output and input gradient of skada's default DANN discriminator on random features."""
    from skada.deep.modules import DomainClassifier

    torch.manual_seed(0)
    x = torch.randn(16, 256, requires_grad=True)
    out = DomainClassifier(num_features=256)(x)
    nn.functional.binary_cross_entropy(out, torch.zeros(16)).backward()
    return {"outputs": sorted({round(float(v), 6) for v in out.detach()}), "max_abs_input_grad": float(x.grad.abs().max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None, help="folder holding digits-full (default ../shared/data)")
    ap.add_argument("--methods", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    from _machine import at_least, command, output_stem

    ap.add_argument("--threads", type=at_least(1), nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=at_least(1), default=2, help="runs of each case (the best is kept)")
    ap.add_argument("--check-skada-default", action="store_true",
                    help="only print the output of skada's default DANN discriminator and its gradient")
    ap.add_argument("--out", default=None, help="output stem (default: results/deep_speed, -custom for other options)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", module="skada|skorch|ot")  # their deprecation notes, KeOps' CPU note
    warnings.filterwarnings("ignore", message="Implicit dimension choice for softmax")  # skada's default discriminator
    if args.check_skada_default:
        print(check_skada_default())
        return

    from _machine import machine_info, machine_line, write_results

    src = load_domain("digits-full", "mnist", data_root=args.data_root)
    tgt = load_domain("digits-full", "usps", data_root=args.data_root)
    steps = skada_steps(len(src), len(tgt))
    results: dict = {"machine": machine_info(), "steps": steps, "batch": BATCH,
                     "skada_default_discriminator": check_skada_default(), "rows": []}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for method in args.methods:
            row: dict = {"dalib": method, "skada": PAIRS[method][0], "threads": threads,
                         "dalib_runs": [], "skada_runs": []}
            for r in range(args.repeat):
                row["dalib_runs"].append(run_dalib(method, steps, args.data_root, seed=r))
                row["skada_runs"].append(run_skada(method, src, tgt, seed=r))
            for side in ("dalib", "skada"):
                runs = row[f"{side}_runs"]
                row[f"{side}_ms_per_step"] = 1e3 * min(x["train_s"] for x in runs) / steps
                row[f"{side}_total_s"] = min(x["total_s"] for x in runs)
            row["speedup_train"] = row["skada_ms_per_step"] / row["dalib_ms_per_step"]
            row["speedup_total"] = row["skada_total_s"] / row["dalib_total_s"]
            print(f"{method} / {row['skada']} threads={threads}: {row['dalib_ms_per_step']:.1f} ms/step against "
                  f"{row['skada_ms_per_step']:.1f} ({row['speedup_train']:.2f}x); end to end "
                  f"{row['dalib_total_s']:.1f} s against {row['skada_total_s']:.1f} s", flush=True)
            results["rows"].append(row)
    out = output_stem(ap, args, HERE / "results" / "deep_speed", args.out, same=("out", "data_root", "check_skada_default"))
    results["command"] = command("deep_speed.py", sys.argv[1:])
    print(write_results(out, results, markdown(results, machine_line(results["machine"]), args)))


def markdown(res: dict, machine: str, args: argparse.Namespace) -> str:
    default = res["skada_default_discriminator"]
    lines = [
        "# Deep training speed: dalib against skada",
        "",
        f"Machine: {machine}.",
        "",
        f"Both train dalib's LeNet on digits-full MNIST -> USPS with {res['batch']} + {res['batch']} samples per step "
        f"and the same SGD, for the {res['steps']} steps of one skada epoch. Best of the repeats, cases alternated in one run. Training: the training loop alone. End to end: "
        "dalib.run whole (reading the files, the final evaluation on both domains) against skada's fit and "
        "predict on both domains from arrays in memory. Speed-up: skada's time over dalib's.",
        "",
        "| dalib | skada | threads | dalib (ms/step) | skada (ms/step) | speed-up | dalib end to end (s) "
        "| skada end to end (s) | speed-up | target acc. dalib | target acc. skada |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        acc = {s: ", ".join(f"{x['target_accuracy']:.1f}" for x in r[f"{s}_runs"]) for s in ("dalib", "skada")}
        lines.append(f"| {r['dalib']} | {r['skada']} | {r['threads']} | {r['dalib_ms_per_step']:.1f} | "
                     f"{r['skada_ms_per_step']:.1f} | {r['speedup_train']:.2f}x | {r['dalib_total_s']:.1f} | "
                     f"{r['skada_total_s']:.1f} | {r['speedup_total']:.2f}x | {acc['dalib']} | {acc['skada']} |")
    lines += [
        "",
        "Target accuracies (one per repeat, seeds 0, 1, ...) are context, not a race: dalib decays the learning "
        "rate and ramps DANN's reversal coefficient, skada keeps both constant. Both source-only forms forward "
        "the source batch alone. skada's DeepJDOT runs at its default weights (reg_dist = reg_cl = 1); "
        "dalib's `ot` defaults to the paper's α = 0.001 and λ_t = 0.0001.",
        "",
        "skada's DANN was given a discriminator ending in a sigmoid. Its default `DomainClassifier` ends in a "
        f"softmax over one output: on random features it outputs {default['outputs']}, and the largest gradient "
        f"it passes back to them is {default['max_abs_input_grad']:g}, so with it skada's DANN trains as source-only.",
        "",
        "Reproduce:",
        "",
        "```",
        res.get("command") or (  # (results written before the command was kept: the options, rebuilt)
            "python benchmarks/deep_speed.py --data-root ../shared/data"
            + (f" --methods {' '.join(args.methods)}" if args.methods != list(PAIRS) else "")
            + (f" --threads {' '.join(map(str, args.threads))}" if args.threads != [1, 2] else "")
            + (f" --repeat {args.repeat}" if args.repeat != 2 else "")),
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
