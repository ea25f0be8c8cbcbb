"""Two worker processes on 127.0.0.1 for the --strategy=multi_worker command-line
tests: free ports, TF_CONFIG, starting a program as worker INDEX, collecting
the outputs, and the files a run wrote."""

import json
import os
import socket
import subprocess
import sys
import time


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
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_CONFIG=tf_config(ports, index),
               TMPDIR=str(tmpdir))
    env.pop("GACD_DATA_DIR", None)
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
