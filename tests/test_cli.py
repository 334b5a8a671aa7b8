"""The command line: ``python -m fastbfly demo`` and ``python -m fastbfly factorize``.

A few runs go through a real subprocess (``sys.executable -m fastbfly``, with a shared
``NUMBA_CACHE_DIR`` so each compiles at most once); the rest call `fastbfly.cli.main`
in-process, which is the same code without the start-up cost.
"""

import re
import subprocess
import sys

import numpy as np
import pytest

import fastbfly
from fastbfly.cli import main

from conftest import assert_close, noisy, relative_error


def run_cli(args, env, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "fastbfly", *map(str, args)], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


# ============================================================================ subprocess
def test_demo_subprocess(subprocess_env, tmp_path):
    result = run_cli(["demo", "--size", "64"], subprocess_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "error" in result.stdout
    lines = [line for line in result.stdout.splitlines() if "error" in line]
    assert len(lines) == 2  # the exact DFT and its noisy variant
    exact = float(lines[0].split("error")[1].split()[0])
    assert exact < 1e-10


def test_factorize_subprocess_round_trip(subprocess_env, tmp_path):
    F = np.fft.fft(np.eye(64))
    np.save(tmp_path / "in.npy", F)
    result = run_cli(["factorize", "in.npy", "-o", "out.npz", "--perm", "bitrev"],
                     subprocess_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "relative error" in result.stdout
    B = fastbfly.load(tmp_path / "out.npz")
    np.testing.assert_array_equal(B.perm, fastbfly.bit_reversal_permutation(64))
    assert_close(B.toarray(), F, np.complex128)


def test_bad_input_subprocess(subprocess_env, tmp_path):
    Z = np.ones((16, 16))
    Z[2, 3] = np.nan
    np.save(tmp_path / "nan.npy", Z)
    result = run_cli(["factorize", "nan.npy", "-o", "out.npz"], subprocess_env, tmp_path)
    assert result.returncode != 0
    assert any(line.startswith("error:") and "NaN" in line for line in result.stderr.splitlines())
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.npz").exists()


# ============================================================================ in-process
@pytest.mark.parametrize("tree", ["balanced", "left-to-right", "right-to-left"])
@pytest.mark.parametrize("orthonormalize", [True, False])
def test_factorize_options(tree, orthonormalize, tmp_path, capsys, rng):
    Z = noisy(rng, fastbfly.hadamard_butterfly(32).toarray(), 0.05)
    np.save(tmp_path / "in.npy", Z)
    argv = ["factorize", str(tmp_path / "in.npy"), "-o", str(tmp_path / "out.npz"), "--tree", tree]
    if not orthonormalize:
        argv.append("--no-orthonormalize")
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "relative error" in captured.out
    assert "split 4/4" in captured.err  # progress
    B = fastbfly.load(tmp_path / "out.npz")
    expected = fastbfly.factorize(Z, tree=tree, orthonormalize=orthonormalize)
    np.testing.assert_allclose(B.toarray(), expected.toarray(), rtol=0, atol=1e-12)
    assert relative_error(B.toarray(), Z) < 0.05


def test_factorize_with_a_permutation_file(tmp_path, capsys, rng):
    p = rng.permutation(32)
    factors = [fastbfly.Factor(q, rng.standard_normal(tuple(q))) for q in fastbfly.Chain.square_dyadic(32)]
    Z = fastbfly.Butterfly(factors, perm=p).toarray()
    np.save(tmp_path / "in.npy", Z)
    np.save(tmp_path / "perm.npy", p)
    assert main(["factorize", str(tmp_path / "in.npy"), "-o", str(tmp_path / "out.npz"),
                 "--perm", str(tmp_path / "perm.npy")]) == 0
    B = fastbfly.load(tmp_path / "out.npz")
    np.testing.assert_array_equal(B.perm, p)
    assert_close(B.toarray(), Z, np.float64)


def test_factorize_keeps_float32(tmp_path, capsys, rng):
    np.save(tmp_path / "in.npy", rng.standard_normal((16, 16)).astype(np.float32))
    assert main(["factorize", str(tmp_path / "in.npy"), "-o", str(tmp_path / "out.npz")]) == 0
    assert fastbfly.load(tmp_path / "out.npz").dtype == np.float32


def bad_inputs(tmp_path):
    """name -> (argv tail after the command, expected text in the error line)."""
    nan = np.ones((8, 8))
    nan[1, 1] = np.inf
    np.save(tmp_path / "inf.npy", nan)
    np.save(tmp_path / "vector.npy", np.ones(8))
    np.save(tmp_path / "objects.npy", np.array([[1, None]], dtype=object), allow_pickle=True)
    np.save(tmp_path / "good.npy", np.eye(8))
    np.save(tmp_path / "strings.npy", np.array([["a", "b"], ["c", "d"]]))
    np.save(tmp_path / "badperm.npy", np.zeros(8, dtype=np.int64))
    np.save(tmp_path / "empty.npy", np.zeros((0, 0)))
    (tmp_path / "text.npy").write_text("1 2\n3 4\n")
    out = str(tmp_path / "out.npz")
    return {
        "inf": (["factorize", tmp_path / "inf.npy", "-o", out], "NaN or Inf"),
        "1-D": (["factorize", tmp_path / "vector.npy", "-o", out], "2-D"),
        "empty": (["factorize", tmp_path / "empty.npy", "-o", out], "empty"),
        "pickled": (["factorize", tmp_path / "objects.npy", "-o", out], "pickle|object"),
        "strings": (["factorize", tmp_path / "strings.npy", "-o", out], "<U1"),
        "text": (["factorize", tmp_path / "text.npy", "-o", out], "error"),
        "missing": (["factorize", tmp_path / "missing.npy", "-o", out], "missing.npy"),
        "bad-perm": (["factorize", tmp_path / "good.npy", "-o", out, "--perm",
                      tmp_path / "badperm.npy"], "more than once"),
        "missing-perm": (["factorize", tmp_path / "good.npy", "-o", out, "--perm",
                          tmp_path / "nope.npy"], "nope.npy"),
        "bad-output-dir": (["factorize", tmp_path / "good.npy", "-o",
                            tmp_path / "no" / "such" / "dir.npz"], "dir"),
        "demo-size": (["demo", "--size", "48"], "48"),
    }


BAD_NAMES = ["inf", "1-D", "empty", "pickled", "strings", "text", "missing", "bad-perm",
             "missing-perm", "bad-output-dir", "demo-size"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_inputs_give_an_error_line(name, tmp_path, capsys):
    argv, expected = bad_inputs(tmp_path)[name]
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code != 0
    error_lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert error_lines, captured.err
    assert re.search(expected, error_lines[0]), error_lines[0]
    assert not (tmp_path / "out.npz").exists()


@pytest.mark.parametrize("argv", [[], ["bogus"], ["factorize", "in.npy"],
                                  ["factorize", "in.npy", "-o", "x.npz", "--tree", "sideways"]])
def test_usage_errors_exit_with_code_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err
