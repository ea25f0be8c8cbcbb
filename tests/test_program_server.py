"""The tests' program runner (program_server.py) against a real ``python -m``.

Most program tests run the program in a process forked from a server that has
imported TensorFlow once; these check that what a test sees from it is what a
fresh interpreter gives: exit code (normal, ``sys.exit`` with a number or a
message, an exception, a signal), stdout and stderr, argv, the environment, the
working folder and ``sys.path``; that a variable read at an interpreter's start
gets a fresh one; and that a timeout kills the program and raises as
``subprocess.run`` does.
"""

import json
import os
import re
import subprocess
import textwrap
import time

import pytest
from program_helpers import _ProgramServer, run_module, run_program, write_tiny_cifar10

PROBE = textwrap.dedent("""
    import json, os, signal, sys, time
    mode = sys.argv[1]
    print(json.dumps({
        "name": __name__, "argv0": os.path.basename(sys.argv[0]), "argv": sys.argv[1:],
        "cwd": os.getcwd(), "path0": sys.path[0], "env": os.environ.get("GACD_TEST_PROBE"),
        "encoding": sys.stdout.encoding, "stdout": sys.stdout is sys.__stdout__,
        "parent": os.getppid()}))
    print("to stderr", file=sys.stderr)
    if mode == "int":
        sys.exit(3)
    if mode == "str":
        sys.exit("a message")
    if mode == "raise":
        raise ValueError("boom")
    if mode == "signal":
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "sleep":
        open(sys.argv[2], "w").write(str(os.getpid()))
        time.sleep(60)
""")

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork: every run is fresh")


@pytest.fixture
def probe(tmp_path, monkeypatch):
    (tmp_path / "probe.py").write_text(PROBE)
    monkeypatch.chdir(tmp_path)  # `python -m probe` finds it in the working folder
    monkeypatch.setenv("GACD_TEST_PROBE", "a value")
    return tmp_path


def _unstamped(text):
    return re.sub(r"^([IWEF]\d{4}) [\d:.]+ +\d+ ", r"\1 ", text, flags=re.MULTILINE)


def _fresh(monkeypatch, run, *args, **kwargs):
    monkeypatch.setenv("GACD_TEST_FRESH_PROCESSES", "1")
    result = run(*args, **kwargs)
    monkeypatch.delenv("GACD_TEST_FRESH_PROCESSES")
    return result


@pytest.mark.parametrize("mode, code", [("none", 0), ("int", 3), ("str", 1), ("raise", 1),
                                        ("signal", -9)])
def test_a_forked_module_ends_as_in_a_fresh_interpreter(probe, monkeypatch, mode, code):
    forked = run_module("probe", mode, "--flag=x")
    fresh = _fresh(monkeypatch, run_module, "probe", mode, "--flag=x")
    assert forked.returncode == fresh.returncode == code
    seen = json.loads(forked.stdout.splitlines()[0])
    want = json.loads(fresh.stdout.splitlines()[0])
    # The forked one really ran in the server's child; the fresh one under this process.
    assert seen.pop("parent") == _ProgramServer._server.process.pid
    assert want.pop("parent") == os.getpid()
    assert seen == want
    assert want["env"] == "a value" and want["cwd"] == str(probe) and want["name"] == "__main__"
    assert forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1]
    assert forked.stderr.splitlines()[-1] == {
        "str": "a message", "raise": "ValueError: boom"}.get(mode, "to stderr")


def test_a_timeout_kills_the_program_and_the_next_run_still_works(probe):
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run_module("probe", "sleep", str(probe / "pid"), timeout=2)
    assert time.monotonic() - start < 30
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(int((probe / "pid").read_text()), 0)
    assert run_module("probe", "none").returncode == 0


def test_a_startup_variable_gets_a_fresh_interpreter(monkeypatch, tmp_path):
    # PYTHONPATH is read when an interpreter starts: a forked child cannot honour it.
    (tmp_path / "sitecustomize.py").write_text("print('fresh interpreter')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    result = run_program("evaluate", "--helpfull")
    assert result.stdout.startswith("fresh interpreter")


def test_a_program_fails_as_in_a_fresh_interpreter(tmp_path, monkeypatch):
    data = write_tiny_cifar10(tmp_path / "data", train=20, test=10)
    monkeypatch.chdir(tmp_path)  # the relative paths resolve against the working folder
    (tmp_path / "model.keras").write_bytes(b"not a zip")
    args = ("evaluate", "--model=model.keras", "--data_dir=data")
    forked, fresh = run_program(*args), _fresh(monkeypatch, run_program, *args)
    assert data.is_dir() and forked.returncode == fresh.returncode == 1
    # Line by line, but for the time and thread id of absl's log prefix.
    assert _unstamped(forked.stderr) == _unstamped(fresh.stderr)
    assert forked.stdout == fresh.stdout
    assert forked.stderr.splitlines()[-1].startswith("error: ")
    assert "does not exist" not in forked.stderr
