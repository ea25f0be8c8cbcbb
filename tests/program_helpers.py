"""Helpers shared by the tests that run the absl programs (forked from program_server.py)."""

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from gacd_tf.data import write_cifar10


def run_program(module, *args, timeout=300):
    """Runs ``python -m gacd_tf.programs.MODULE ARGS`` offline; returns the CompletedProcess.

    The program runs in a process forked from ``program_server.py``, which has
    imported TensorFlow once (a fresh interpreter spends about 8 s of a core on
    that import): the same module run as ``__main__``, with this process's
    environment and working folder. A real ``python -m`` subprocess is used instead
    when the environment changes how an interpreter starts (PYTHON*, TF_*, ...
    differ from the server's), or everywhere with GACD_TEST_FRESH_PROCESSES=1.
    """
    env = _program_env(os.environ)
    command = [sys.executable, "-m", f"gacd_tf.programs.{module}", *args]
    if os.environ.get("GACD_TEST_FRESH_PROCESSES") == "1" or not _ProgramServer.can_fork(env):
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env=env)
    return _ProgramServer.get().run(command, env, timeout)


def _program_env(environ):
    env = dict(environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("GACD_DATA_DIR", None)
    return env


def _read_text(path):
    with open(path, encoding="utf-8", errors="replace") as file:
        return file.read()


class _ProgramServer:
    """The client of tests/program_server.py (one server per test process)."""

    _server = None
    # The server starts with the environment this module was imported in (before
    # any test changed it). Variables read when an interpreter or TensorFlow starts
    # cannot change in a forked child: a request that changes one runs fresh.
    _ENV = _program_env(os.environ)
    _STARTUP_PREFIXES = ("PYTHON", "TF_", "CUDA", "XLA_", "OMP_", "KMP_", "MKL", "LD_")

    @classmethod
    def _startup(cls, env):
        return {k: v for k, v in env.items() if k.startswith(cls._STARTUP_PREFIXES)}

    @classmethod
    def can_fork(cls, env):
        return hasattr(os, "fork") and cls._startup(env) == cls._startup(cls._ENV)

    @classmethod
    def get(cls):
        if cls._server is None or cls._server.process.poll() is not None:
            cls._server = cls()
        return cls._server

    def __init__(self):
        here = os.path.dirname(os.path.abspath(__file__))
        # Its own folder, whatever the test's working folder: each request gives its own.
        self.process = subprocess.Popen([sys.executable, "program_server.py"], cwd=here,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        env=self._ENV)
        self.buffer = b""
        atexit.register(self.close)

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def _answer(self, deadline):
        fd = self.process.stdout.fileno()
        while b"\n" not in self.buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError("tests/program_server.py ended; its stderr went to "
                                   "/dev/null: run the test with GACD_TEST_FRESH_PROCESSES=1")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def run(self, command, env, timeout):
        with tempfile.TemporaryDirectory(prefix="program-") as folder:
            out, err = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
            for path in (out, err):  # empty if the program is killed before it opens them
                open(path, "w").close()
            request = {"module": command[2], "args": command[3:], "env": env,
                       "cwd": os.getcwd(), "stdout": out, "stderr": err}
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
            pid = self._answer(None)["pid"]
            answer = self._answer(time.monotonic() + timeout)
            if answer is None:  # as subprocess.run: kill the program, then raise
                os.kill(pid, signal.SIGKILL)
                self._answer(None)
            stdout, stderr = (_read_text(path) for path in (out, err))
        if answer is None:
            raise subprocess.TimeoutExpired(command, timeout, output=stdout, stderr=stderr)
        return subprocess.CompletedProcess(command, answer["returncode"], stdout, stderr)


def write_tiny_cifar10(folder, train=40, test=20, seed=0):
    """Random images with labels 0..9 in turn, in the official CIFAR-10 binary layout."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("test", test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        write_cifar10(folder, split, images, labels)
    return folder
