"""A run stopped part-way, as a kill would stop it: the tests of resumes start from one."""

from __future__ import annotations

import pytest

from dalib.runner import run


class Killed(Exception):
    """What the tests raise from a run's ``on_step`` to stop it."""


def killed_at(config, out, step):
    """Run ``config`` into ``out`` and stop it with an exception after ``step`` steps."""

    def kill(done, logs):
        if done == step:
            raise Killed

    with pytest.raises(Killed):
        run(config, out, progress_bar=False, on_step=kill)
