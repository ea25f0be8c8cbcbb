"""The tests' program runner (program_server.py) against a real ``python -m``.

Most program tests run the program in a process forked from a server that has
imported TensorFlow once; these check that what a test sees from it is what a
fresh interpreter gives: exit code, stdout and stderr, the environment and the
working folder, that a variable read at an interpreter's start gets a fresh
one, and that a timeout kills the program and raises as
``subprocess.run`` does.
"""

import os
import subprocess

import pytest
from program_helpers import run_program, write_tiny_cifar10


def _fresh(monkeypatch, *args):
    monkeypatch.setenv("GACD_TEST_FRESH_PROCESSES", "1")
    result = run_program(*args)
    monkeypatch.delenv("GACD_TEST_FRESH_PROCESSES")
    return result


def test_a_forked_program_prints_and_exits_as_a_fresh_interpreter(tmp_path, monkeypatch):
    data = write_tiny_cifar10(tmp_path / "data", train=20, test=10)
    monkeypatch.chdir(tmp_path)  # a relative --data_dir resolves against the working folder
    (tmp_path / "model.keras").write_bytes(b"not a zip")  # found only from tmp_path
    args = ("evaluate", "--model=model.keras", "--data_dir=data")
    forked, fresh = run_program(*args), _fresh(monkeypatch, *args)
    assert data.is_dir() and forked.returncode == fresh.returncode == 1
    assert forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1]
    assert forked.stderr.splitlines()[-1].startswith("error: ")
    assert "does not exist" not in forked.stderr
    assert forked.stdout == fresh.stdout


def test_a_timeout_kills_the_program_and_the_next_run_still_works():
    with pytest.raises(subprocess.TimeoutExpired):
        run_program("evaluate", "--helpfull", timeout=0.001)
    result = run_program("evaluate", "--helpfull")
    assert "--model" in result.stdout  # absl prints the help and exits 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here: every run is fresh")
def test_a_startup_variable_gets_a_fresh_interpreter(monkeypatch, tmp_path):
    # PYTHONPATH is read when an interpreter starts: a forked child cannot honour it.
    (tmp_path / "sitecustomize.py").write_text("print('fresh interpreter')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    result = run_program("evaluate", "--helpfull")
    assert result.stdout.startswith("fresh interpreter")
