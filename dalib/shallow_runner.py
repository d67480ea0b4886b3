"""The shallow path of ``dalib run``: a method's shallow form on feature matrices, then a
classifier (1-NN, logistic regression or linear SVM), with the same outputs as deep runs."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dalib.errors import CheckpointError

__all__ = ["run_shallow"]


def run_shallow(
    config: Any,
    dataset: str,
    device: torch.device,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    resume: bool = False,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> Any:
    """Fit ``config.method``'s shallow form from ``config.src`` to ``config.tgt`` and a
    ``config.classifier`` on the adapted source; report source and target accuracy. The
    estimator computes on ``device`` (``config.device`` as :func:`dalib.run` resolved it).

    The source accuracy is the classifier's on the (adapted) source samples it was
    trained on; target labels are used only to report the target accuracy.
    """
    from dalib.data import load_domain
    from dalib.registry import get_method
    from dalib.runner import (
        RESULT, RunResult, _check_domains, build_method_config, check_fresh_out_dir, check_same_settings,
        end_of_writing, refuse_while_written,
    )

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every process would fit it and write the same folder
        from dalib.errors import ConfigError

        raise ConfigError(f"the shallow form of {config.method} fits in one process: run it without torchrun "
                          "(or --mode deep to train a network on every process)")
    method_cls = get_method(config.method)
    shallow_config = build_method_config(config, method_cls, "shallow")
    out = Path(out_dir).expanduser() if out_dir is not None else None
    if out is not None and resume:
        if not (out / RESULT).is_file():
            if out.is_dir():  # a fresh run still fitting there: not "nothing to resume", which sends one to start afresh
                refuse_while_written(out)
            raise CheckpointError(f"nothing to resume: no {RESULT} in {out} (a shallow run has no checkpoint)")
        try:
            done = json.loads((out / RESULT).read_text())
            if done.get("mode") != "shallow":
                raise CheckpointError(f"{out / RESULT} is a {done.get('mode', 'unknown')} run's result, not a shallow "
                                      "one: choose another --out")
            check_same_settings(done.get("run_config"), config, f"the result in {out}", "shallow")
            return RunResult(float(done["source_accuracy"]), done["target_accuracy"], 0, float(done["seconds"]), out,
                             [], diagnostics=dict(done.get("diagnostics") or {}), mode="shallow")
        except OSError as exc:  # unreadable here, not damaged: no advice to delete it
            raise CheckpointError(f"cannot read {out / RESULT}: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            raise CheckpointError(f"{out / RESULT} is damaged: delete it and run again without --resume") from None

    kw = {"data_root": config.data_root, "data_dir": config.data, "image_size": config.image_size}
    src = load_domain(dataset, config.src, **kw)
    tgt = load_domain(dataset, config.tgt, **kw)
    _check_domains(src, tgt, config)
    if src.x is None or tgt.x is None:
        from dalib.errors import ConfigError

        lazy = src if src.x is None else tgt
        raise ConfigError(f"the shallow form needs in-memory features, and domain {lazy.name} is read sample by sample "
                          "(an image folder, a dataset of its own): train with --mode deep")
    made = out is not None and not out.exists()
    if out is not None:
        check_fresh_out_dir(out)
    ok = False
    try:
        result = _fit_and_report(config, dataset, method_cls, shallow_config, src, tgt, device, out, on_start)
        ok = True
        return result
    finally:
        end_of_writing(out, made, ok)


def _fit_and_report(config: Any, dataset: str, method_cls: Any, shallow_config: Any, src: Any, tgt: Any,
                    device: Any, out: Path | None, on_start: Callable[[dict[str, Any]], None] | None) -> Any:
    from dalib.data.registry import data_root_read
    from dalib.plugin import plain_diagnostics
    from dalib.runner import RunResult, _code_hashes, _seed_everything, accuracy_of, hardware, write_result
    from dalib.shallow.pipeline import fit_shallow

    if on_start is not None:
        on_start({"mode": "shallow", "dataset": dataset, "src": src.name, "tgt": tgt.name, "n_src": len(src),
                  "n_tgt": len(tgt), "classifier": config.classifier, "device": str(device)})

    code = _code_hashes(method_cls)  # the code that fits, before it does (an edit meanwhile is not it)
    _seed_everything(config.seed)
    t0 = time.perf_counter()
    xs = src.x.flatten(1).to(device, torch.float64)  # (N_s, D): the estimator computes on this device
    xt = tgt.x.flatten(1).to(device, torch.float64)  # (N_t, D)
    clf, adapted = fit_shallow(method_cls, shallow_config, xs, src.y.numpy(), xt, config.classifier)
    source_acc = accuracy_of(clf.predict(adapted.xs.detach().cpu().numpy()), src.y)
    target_acc = accuracy_of(clf.predict(adapted.xt.detach().cpu().numpy()), tgt.y)
    seconds = time.perf_counter() - t0
    result = RunResult(source_acc, target_acc, 0, seconds, out, [],
                       diagnostics=plain_diagnostics(adapted.info or {}, config.method), mode="shallow")
    if out is not None:
        write_result(out, {
            "method": config.method, "mode": "shallow", "classifier": config.classifier, "dataset": dataset,
            "src": src.name, "tgt": tgt.name, "data_root": data_root_read(dataset, config.data_root),
            "samples": {"source": len(src), "target": len(tgt)}, "device": str(device),
            "hardware": hardware(device), **result.to_dict(),
            "method_config": dataclasses.asdict(shallow_config), "diagnostics": result.diagnostics,
            "run_config": config.to_dict(), "code": code,
        }, method_cls)
    return result
