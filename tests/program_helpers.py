"""Helpers shared by the tests that run the absl programs (forked from program_server.py)."""

import atexit
import json
import locale
import os
import select
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

from gacd_tf.data import write_cifar10


def run_program(module, *args, timeout=300, cwd=None):
    """Runs ``python -m gacd_tf.programs.MODULE ARGS`` offline; returns the CompletedProcess."""
    return run_module(f"gacd_tf.programs.{module}", *args, timeout=timeout, cwd=cwd)


def run_module(module, *args, timeout=300, cwd=None):
    """``python -m MODULE ARGS`` in ``program_env()``, in ``cwd`` (default: this one's).

    The module runs in a process forked from ``program_server.py``, which has
    imported TensorFlow once (a fresh interpreter spends about 8 s of a core on
    that import): the same module run as ``__main__``, with this process's
    environment and working folder. A real ``python -m`` subprocess runs instead
    where the environment differs from the server's in a variable that is read
    when an interpreter starts (any but those in ``_ProgramServer.RUNTIME``),
    where the server says it cannot fork safely, or everywhere with
    GACD_TEST_FRESH_PROCESSES=1.
    """
    env = program_env()
    command = [sys.executable, "-m", module, *args]
    cwd = os.path.abspath(cwd or os.getcwd())
    server = None
    if os.environ.get("GACD_TEST_FRESH_PROCESSES") != "1" and _ProgramServer.can_fork(env):
        server = _ProgramServer.get()
    if server is None:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env=env, cwd=cwd)
    return server.run(command, env, cwd, timeout)


def program_env(**extra):
    """The environment a program runs in for the tests: this process's (or, for the
    program server, the one this module was imported in), TensorFlow's C++ logs
    off, GACD_DATA_DIR removed (programs run offline on the data they are given),
    then ``extra``."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("GACD_DATA_DIR", None)
    env.update(extra)
    return env


def _read_text(path):
    # As subprocess.run(text=True): the locale's encoding, universal newlines.
    with open(path, encoding=locale.getpreferredencoding(False)) as file:
        return file.read()


class _ProgramServer:
    """The client of tests/program_server.py (one server per test process)."""

    _server = None
    unusable = ""  # why the server cannot fork here; then every run is fresh
    # The server starts with the environment this module was imported in (before
    # any test changed it). A forked child cannot take a different value of a
    # variable read when an interpreter, TensorFlow or Keras starts (PYTHONPATH,
    # TF_*, KERAS_*, HOME, LANG, ...): a request whose environment differs from the
    # server's in any variable but those of RUNTIME (read while a program runs)
    # gets a fresh interpreter.
    _ENV = program_env()
    RUNTIME = ("PYTEST_", "GACD_", "TFDS_DATA_DIR", "TF_CONFIG", "http_proxy", "https_proxy",
               "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")
    START_SECONDS = 600  # for the server's own start (its TensorFlow import)

    @classmethod
    def can_fork(cls, env):
        if not hasattr(os, "fork") or cls.unusable:
            return False
        keys = set(env) | set(cls._ENV)
        return all(env.get(k) == cls._ENV.get(k) for k in keys if not k.startswith(cls.RUNTIME))

    @classmethod
    def get(cls):
        """The running server, started if needed; None if it cannot fork here."""
        if cls._server is None or cls._server.process.poll() is not None:
            server = cls()
            try:
                ready = server._answer(time.monotonic() + cls.START_SECONDS)
            except RuntimeError:  # it ended before its first answer
                ready = None
            if not (ready or {}).get("ready"):
                server.close()
                cls.unusable = (ready or {}).get("why") or "it did not start"
                warnings.warn(f"tests/program_server.py: {cls.unusable}; programs run in "
                              "fresh interpreters")
                return None
            cls._server = server
        return cls._server

    def __init__(self):
        import gacd_tf

        here = os.path.dirname(os.path.abspath(__file__))
        library = os.path.dirname(os.path.dirname(os.path.abspath(gacd_tf.__file__)))
        # Its own folder, whatever the test's working folder: each request gives its own.
        # It imports the library this process imported, installed or not.
        self.process = subprocess.Popen([sys.executable, "program_server.py", library],
                                        cwd=here,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        env=self._ENV)
        self.buffer = b""
        self.requests = 0
        atexit.register(self.close)

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _answer(self, deadline):
        """The server's next answer, or None when ``deadline`` passes first."""
        fd = self.process.stdout.fileno()
        while b"\n" not in self.buffer:
            left = max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError("tests/program_server.py ended (its stderr goes to "
                                   "/dev/null): run the test with GACD_TEST_FRESH_PROCESSES=1")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def run(self, command, env, cwd, timeout):
        self.requests += 1
        with tempfile.TemporaryDirectory(prefix="program-") as folder:
            out, err = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
            for path in (out, err):  # empty if the program is killed before it opens them
                open(path, "w").close()
            request = {"id": self.requests, "module": command[2], "args": command[3:],
                       "env": env, "cwd": cwd, "stdout": out, "stderr": err,
                       "timeout": timeout}
            try:
                self.process.stdin.write((json.dumps(request) + "\n").encode())
                self.process.stdin.flush()
                # The server kills the program at its timeout; this waits a minute more.
                answer = self._answer(time.monotonic() + timeout + 60)
                if answer is None or answer["id"] != request["id"]:
                    raise RuntimeError(f"tests/program_server.py did not answer request "
                                       f"{request['id']} (got {answer})")
            except BaseException:
                # Whatever went wrong (an interrupt included), this server's answers can
                # no longer be matched to requests: end it (its child dies with it).
                self.process.kill()
                self.process.wait()
                type(self)._server = None
                raise
            stdout, stderr = (_read_text(path) for path in (out, err))
        if answer["timed_out"]:  # as subprocess.run: the program is killed, then this
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
