"""The toy suite files of the benchmark tests: one task of the ``toy-shift`` dataset (the
``toy_dataset`` fixture registers it)."""


def toy_suite_text(tables: str, seeds: str = "[0]") -> str:
    """A suite file's text: the toy suite's header with ``seeds``, then ``tables``."""
    return f"""
title = "toy shift"
dataset = "toy-shift"
tasks = ["src->tgt"]
seeds = {seeds}
protocol = "the moons, rotated"
{tables.lstrip()}"""
