"""Tests shipped with the package (``pytest --pyargs q2_aam``, the conda recipe's test):
tiny generated data, no network, a few seconds each. The full suite is ``tests/`` in the
source tree (``make test``)."""
