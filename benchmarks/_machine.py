"""Machine and library versions for benchmark result files.

    from _machine import machine_info      # benchmarks/ is on sys.path when run as a script
    info = machine_info()                   # a JSON-serialisable dict

Nothing here imports an optional library that is missing: its version is then ``None``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata

__all__ = ["machine_info", "machine_line", "memory_kib", "write_results"]

_PACKAGES = {
    "torch": "torch",
    "pykeops": "pykeops",
    "pot": "pot",
    "numpy": "numpy",
    "scipy": "scipy",
    "scikit-learn": "scikit-learn",
    "skada": "skada",
    "skorch": "skorch",
    "geomloss": "geomloss",
    "dalib": "dalib",
}


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """CPU model, cores, memory, OS, Python and library versions, CUDA device if any."""
    from dalib.runner import cpu_model  # (a run's result.json names the CPU the same way)

    info: dict = {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "os": platform.platform(),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": _memory_gib(),
        "python": sys.version.split()[0],
        "versions": {name: _version(dist) for name, dist in _PACKAGES.items()},
        "cuda_device": None,
        "cuda_version": None,
        "torch_threads": None,
    }
    try:
        import torch
    except ImportError:
        return info
    info["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(torch.cuda.current_device())  # (the one a run set)
        info["cuda_version"] = torch.version.cuda
    return info


def machine_line(info: dict | None = None) -> str:
    """One line for a markdown header: CPU, cores, memory, GPU, torch version."""
    info = info or machine_info()
    gpu = f", GPU {info['cuda_device']}" if info.get("cuda_device") else ", no GPU"
    v = info["versions"]
    libs = ", ".join(f"{k} {val}" for k, val in v.items() if val and k != "dalib")
    return (
        f"{info['cpu']} ({info['cpu_cores']} cores, {info['memory_gib']} GiB){gpu}; "
        f"Python {info['python']}; {libs}"
    )


def write_results(stem: str | os.PathLike[str], payload: dict, markdown: str | None = None) -> str:
    """Write ``STEM.json`` (and ``STEM.md`` when given), each atomically: a benchmark killed while
    writing leaves the previous results whole. The pair stays a pair: ``.md`` first, then
    ``.json``, whose failure puts the ``.md`` as it was back. A failed write ends the benchmark
    with one line (status 2). Returns "wrote PATHS" for the benchmark to print."""
    import json
    from pathlib import Path

    from dalib.errors import DalibError
    from dalib.runner import atomic_write_bytes, atomic_write_text

    stem = Path(stem)
    if stem.suffix in (".json", ".md"):
        stem = stem.with_suffix("")
    data = stem.parent / f"{stem.name}.json"
    table = stem.parent / f"{stem.name}.md"
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        before = table.read_bytes() if markdown is not None and table.is_file() else None
        if markdown is not None:
            atomic_write_text(table, markdown if markdown.endswith("\n") else markdown + "\n")
        try:
            atomic_write_text(data, json.dumps(payload, indent=2, ensure_ascii=False, default=float) + "\n")
        except DalibError:
            if markdown is not None:
                with contextlib.suppress(DalibError, OSError):
                    if before is None:
                        table.unlink()
                    else:
                        atomic_write_bytes(table, lambda fh: fh.write(before))
            raise
    except (DalibError, OSError) as exc:
        why = f"cannot write the results {stem}.*: {exc.strerror}" if isinstance(exc, OSError) else str(exc)
        print(f"{Path(sys.argv[0]).name}: error: {why}", file=sys.stderr)
        raise SystemExit(2) from None
    return "wrote " + " and ".join(str(p) for p in ([data, table] if markdown is not None else [data]))


def memory_kib() -> dict:
    """VmRSS and VmHWM (peak resident set) of this process from /proc/self/status, in KiB.

    Not ``getrusage().ru_maxrss``: Linux carries it over ``execve`` from the forking parent,
    so a child started by a parent holding 900 MB reports at least 900 MB."""
    import resource

    out = {}
    try:
        with open("/proc/self/status", encoding="utf-8") as fh:
            for line in fh:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "VmHWM"):
                    out[key] = float(line.split()[1])
    except OSError:
        pass
    if "VmHWM" not in out:  # no procfs: fall back on getrusage (may include the parent's peak)
        peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        out["VmHWM"] = out["VmRSS"] = peak / 1024 if sys.platform == "darwin" else peak  # (macOS: bytes)
    return out


def at_least(low: float, kind: type = int, strict: bool = False):
    """An argparse type: a ``kind`` number >= ``low`` (> with ``strict``), else argparse's
    one-line error (status 2)."""
    import argparse

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not (value > low if strict else value >= low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low:g}, got {text}")
        return value

    return parse


def output_stem(parser, args, published: str | os.PathLike[str], out: str | None,
                same: tuple[str, ...] = ("out", "data_root", "jobs")) -> str:
    """Where a benchmark writes: ``out`` when given; ``published`` (the file the docs quote)
    for a run with the parser's defaults; ``published-custom`` for a run with other options
    (``same``: options that change no figure), so that a narrowed run never replaces the
    published table. Says so when it does."""
    if out:
        return str(out)
    changed = [a.option_strings[0] for a in parser._actions
               if a.dest not in (*same, "help") and a.option_strings and getattr(args, a.dest, None) != a.default]
    if not changed:
        return str(published)
    custom = f"{published}-custom"
    print(f"options other than the published run's ({', '.join(changed)}): writing {custom}.*, not the published "
          f"results (give --out to choose)", flush=True)
    return custom


def command(script: str, argv: list[str]) -> str:
    """The command line that ran a benchmark, as its results file's Reproduce line gives it."""
    import shlex

    return " ".join(["python", f"benchmarks/{script}", *map(shlex.quote, argv)])


if __name__ == "__main__":
    import json

    print(json.dumps(machine_info(), indent=2))
