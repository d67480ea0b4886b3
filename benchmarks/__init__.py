"""dalib's benchmarks, installed as ``dalib_benchmarks``: the accuracy suites behind
``dalib bench`` (:mod:`.suite`, :mod:`.report`, the suite files in ``suites/``) and the
speed benchmarks, which run as scripts (``python benchmarks/kernels.py``)."""
