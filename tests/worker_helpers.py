"""Two worker processes on 127.0.0.1 for the --strategy=multi_worker command-line
tests: free ports, TF_CONFIG, starting a program as worker INDEX, collecting
the outputs, and the files a run wrote."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

from program_helpers import program_env


def free_ports(count=2):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def start_worker(module, args, ports, index, tmpdir):
    """``python -m gacd_tf.programs.MODULE ARGS --strategy=multi_worker`` as worker INDEX."""
    os.makedirs(tmpdir, exist_ok=True)
    env = program_env(TF_CONFIG=tf_config(ports, index), TMPDIR=str(tmpdir))
    return subprocess.Popen(
        [sys.executable, "-m", f"gacd_tf.programs.{module}", *args, "--strategy=multi_worker"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(procs, timeout=300):
    deadline, outputs = time.monotonic() + timeout, []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic())))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outputs


def files(folder):
    """Relative paths under ``folder``, TensorBoard event files by folder only."""
    out = set()
    for root, _, names in os.walk(folder):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), folder)
            out.add(os.path.dirname(rel) + "/<events>" if ".tfevents." in name else rel)
    return out


def event_pids(folder):
    return {int(name.rsplit(".", 3)[-3]) for root, _, names in os.walk(folder)
            for name in names if ".tfevents." in name}


def kill_one_and_restart(module, args, tmp, state_file, after_kill):
    """Two workers of ``module``; worker 1 SIGKILLed once ``state_file`` (the first
    checkpoint) exists; the survivor must stop with the one-line "another worker"
    error; ``after_kill()`` (the caller's checks of the interrupted run) is called;
    then both start again with the same command and are collected.

    Returns:
        ``(state, pids, outputs)``: the checkpoint state at the kill, the
        chief's process ids (for TensorBoard file names) and ``finish``'s
        ``[(stdout, stderr)]`` of the restarted pair.
    """
    ports = free_ports()
    procs = [start_worker(module, args, ports, i, tmp[i]) for i in range(2)]
    pids = {procs[0].pid}
    deadline = time.monotonic() + 240
    while not state_file.exists() and procs[0].poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    state = json.loads(state_file.read_text())
    # The survivor notices (TensorFlow's heartbeats) and stops with one line.
    (_, err0), = finish(procs[:1], timeout=180)
    assert procs[0].returncode == 1, err0[-3000:]
    last = err0.strip().splitlines()[-1]
    assert last.startswith("error: another worker of the cluster stopped"), last
    assert "start every stopped worker again with the same command" in last
    after_kill()

    # Both started again with the same commands: they finish the run.
    procs = [start_worker(module, args, ports, i, tmp[i]) for i in range(2)]
    pids.add(procs[0].pid)
    outputs = finish(procs)
    for i, proc in enumerate(procs):
        assert proc.returncode == 0, f"worker {i}:\n{outputs[i][1][-3000:]}"
    return state, pids, outputs
