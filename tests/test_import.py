"""What ``import fastbfly`` costs: scipy's solver stack is loaded on first use only."""

import subprocess
import sys

import pytest


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, check=True)
    return result.stdout.strip()


def test_import_does_not_load_scipy_sparse_linalg():
    # scipy.sparse.linalg costs ~0.4 s, a third of a cold start (issue 4's cold-start goal)
    out = _run("import sys, fastbfly; print('scipy.sparse.linalg' in sys.modules)")
    assert out == "False"


def test_butterfly_operator_is_loaded_on_first_use():
    out = _run(
        "import sys, fastbfly\n"
        "from fastbfly import ButterflyOperator\n"
        "from scipy.sparse.linalg import LinearOperator\n"
        "print(issubclass(ButterflyOperator, LinearOperator), 'ButterflyOperator' in dir(fastbfly),"
        " fastbfly.ButterflyOperator is ButterflyOperator)"
    )
    assert out == "True True True"


def test_unknown_attribute_still_raises():
    import fastbfly

    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        fastbfly.NoSuchThing
