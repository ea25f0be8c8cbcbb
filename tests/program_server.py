"""Runs modules (the absl programs) for the tests, each in a process forked from this one.

Starting a program as ``python -m gacd_tf.programs.NAME`` spends most of a bad-input
case's time importing TensorFlow (about 8 s of one core on the project's 2-core
machine). This server imports TensorFlow, Keras and the library once, runs no
TensorFlow op (so no runtime, thread pool or device exists yet: checked, and said
in its first answer), and then, for each request read from stdin, forks a child
that runs the module as ``__main__`` (``runpy``, as ``python -m`` does) with the
request's argv, environment and working folder, and fds 1 and 2 in the request's
files. The child keeps the interpreter's own ``sys.stdout`` / ``sys.stderr``
(opened for pipes, as a fresh run under ``subprocess.run`` has them) and ends
through the interpreter's shutdown: an exception or ``SystemExit`` leaves it as
it would leave ``python -m``. What the imports printed here is written first into
each child's files, as a fresh run prints it first.

Protocol, one JSON object per line: first ``{"ready": bool, "why": str}``; then
for each request ``{"id", "module", "args", "env", "cwd", "stdout", "stderr",
"timeout"}`` one answer ``{"id", "returncode", "timed_out"}``. The server kills
the child's process group when the timeout passes, and reaps it before it
answers. Differences from a fresh interpreter that remain: the children share
this process's hash seed, the modules imported here are not imported again, and
where the library is not installed its folder stays on their ``sys.path`` (a
fresh run from another working folder would not find it).
``program_helpers.run_program`` is the client.
"""

import json
import os
import signal
import sys
import tempfile
import threading
import time

_ANSWERS = os.fdopen(os.dup(1), "w", buffering=1)
_DEVNULL = os.open(os.devnull, os.O_RDWR)


def _imports():
    """Imports what every program imports; returns what that printed (stdout, stderr)."""
    captured = []
    for fd in (1, 2):
        file = tempfile.TemporaryFile()
        os.dup2(file.fileno(), fd)
        captured.append(file)
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    import gacd_tf.programs.common  # noqa: F401  (the library, not a program module)
    sys.stdout.flush()
    sys.stderr.flush()
    printed = []
    for file in captured:
        file.seek(0)
        printed.append(file.read())
        file.close()
    os.dup2(_DEVNULL, 1)  # nothing else this process prints reaches the answers
    os.dup2(_DEVNULL, 2)
    return printed


# The library the tests imported (its folder is the first argument), whether or not
# it is installed: the children then run the code under test. Added only where the
# path does not already find it (an installed copy's site-packages stays in place).
if len(sys.argv) > 1 and sys.argv[1] not in sys.path:
    sys.path.insert(1, sys.argv[1])
try:
    _PRINTED = _imports()
    _IMPORT_ERROR = ""
except Exception as error:  # noqa: BLE001  (said in the first answer; runs go fresh)
    _PRINTED, _IMPORT_ERROR = (b"", b""), f"the imports failed: {error!r}"

# A program module imported here would make runpy warn on stderr when it runs
# it again as __main__ (programs define their flags only under __main__).
for _name in [n for n in sys.modules if n.startswith("gacd_tf.programs.")]:
    if _name.rsplit(".", 1)[1] in {"train_teacher", "distill", "evaluate", "export",
                                   "analyze", "reproduce", "import_model"}:
        del sys.modules[_name]


def _why_not_forkable():
    from tensorflow.python.eager import context

    if threading.active_count() != 1:
        return f"{threading.active_count()} Python threads after the imports"
    if getattr(getattr(context, "_context", None), "_context_handle", None) is not None:
        return "the TensorFlow runtime started during the imports"
    return ""


def _die_with_the_server():
    """Linux: the child is killed if this server ends (its client killed it, say)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child(request):
    """Sets the child up as ``python -m`` would be; a failure here exits 70."""
    try:
        for fd, path, printed in ((1, request["stdout"], _PRINTED[0]),
                                  (2, request["stderr"], _PRINTED[1])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
            os.write(fd, printed)
        os.dup2(_DEVNULL, 0)
        _ANSWERS.close()
        os.setpgid(0, 0)  # a timeout kills what the program started too
        _die_with_the_server()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["-m", *request["args"]]
        sys.path[0] = request["cwd"]  # `python -m` puts the working folder first
        import numpy

        numpy.random.seed()  # a fresh interpreter's legacy generator is seeded afresh
    except BaseException as error:  # noqa: BLE001
        os.write(2, f"program_server: could not start the child: {error!r}\n".encode())
        os._exit(70)


def _wait(pid, timeout):
    """The child's exit code (negative: a signal), killing its group after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        if time.monotonic() > deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:  # not yet its own group
                os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status), True
        time.sleep(0.02)


def main():
    import runpy

    why = _IMPORT_ERROR or _why_not_forkable()
    _ANSWERS.write(json.dumps({"ready": not why, "why": why}) + "\n")
    if why:
        return
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
            # Anything raised here, SystemExit included, ends this process as it
            # would end `python -m`; so does returning (exit code 0).
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            return
        try:
            os.setpgid(pid, pid)  # as the child does, whichever runs first
        except OSError:
            pass
        returncode, timed_out = _wait(pid, request["timeout"])
        _ANSWERS.write(json.dumps({"id": request["id"], "returncode": returncode,
                                   "timed_out": timed_out}) + "\n")


if __name__ == "__main__":
    main()
