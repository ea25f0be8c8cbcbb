"""Runs the absl programs for the tests, each in a process forked from this one.

Starting a program as ``python -m gacd_tf.programs.NAME`` spends most of a bad-input
case's time importing TensorFlow (about 8 s of one core on the project's 2-core
machine). This server imports TensorFlow, Keras and the library once, runs no
TensorFlow op (so no runtime, thread pool or device exists yet), and then, for
each request read from stdin, forks a child that runs the program module as
``__main__`` with the request's argv, environment and working folder, its fds 1
and 2 in the request's files, and exits as the interpreter would (exit code,
atexit handlers). It answers one JSON line with the child's pid, then one with
its exit code (negative: killed by that signal). ``program_helpers.run_program``
is the client; a test that needs a fresh interpreter (its own PYTHONPATH, say)
gets a real subprocess from it instead.
"""

import atexit
import io
import json
import os
import runpy
import sys
import threading
import traceback

# fd 1 carries the answers; everything else that writes to stdout/stderr in this
# process (TensorFlow's C++ logs at import) goes to /dev/null.
_ANSWERS = os.fdopen(os.dup(1), "w", buffering=1)
_DEVNULL = os.open(os.devnull, os.O_RDWR)
os.dup2(_DEVNULL, 1)
os.dup2(_DEVNULL, 2)

import tensorflow  # noqa: E402,F401
import keras  # noqa: E402,F401

import gacd_tf.programs.common  # noqa: E402,F401  (the library, not a program module)

# A program module imported here would make runpy warn on stderr when it runs
# the module again as __main__; none should be, but make sure.
for _name in [n for n in sys.modules if n.startswith("gacd_tf.programs.")]:
    if _name.rsplit(".", 1)[1] in {"train_teacher", "distill", "evaluate", "export",
                                   "analyze", "reproduce", "import_model"}:
        del sys.modules[_name]


def _open_std(path, fd):
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(target, fd)
    os.close(target)
    # As `python` with PYTHONUNBUFFERED or not: write through, so nothing is lost
    # or reordered within a stream when the child exits.
    return io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                            errors="backslashreplace", write_through=True)


def _child(request):
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.dup2(_DEVNULL, 0)
    _ANSWERS.close()
    sys.stdout = sys.__stdout__ = _open_std(request["stdout"], 1)
    sys.stderr = sys.__stderr__ = _open_std(request["stderr"], 2)
    sys.argv = ["-m", *request["args"]]
    sys.path[0] = request["cwd"]  # as `python -m` puts the working folder first
    code = 0
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        code = stop.code
    except BaseException:  # noqa: BLE001 - printed as the interpreter prints it
        traceback.print_exc()
        code = 1
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    # The interpreter's shutdown: wait for non-daemon threads, run atexit handlers.
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code & 0xFF)


def main():
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                _child(request)
            finally:
                os._exit(70)  # only reached if _child itself failed
        _ANSWERS.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        _ANSWERS.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")


if __name__ == "__main__":
    main()
