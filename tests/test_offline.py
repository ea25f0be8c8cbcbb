"""Offline, a tensorflow-datasets download fails within seconds with one line
(not after the minutes of tfds' retries), and only when tfds has to download."""

import socket
import textwrap
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from program_helpers import run_program
from tensorflow_datasets.core.dataset_builder import DatasetBuilder

from gacd_tf.data import datasets


def closed_port():
    """A local port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def no_proxies(monkeypatch):
    for name in ("http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def listening_port():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def test_probe_tells_reachable_from_refused_from_silent(listening_port, monkeypatch):
    no_proxies(monkeypatch)
    up, down = f"http://127.0.0.1:{listening_port}/x", f"http://127.0.0.1:{closed_port()}/x"
    assert datasets.unreachable([up]) is None
    assert datasets.unreachable([down, up]) is None  # any source that answers will do
    assert datasets.unreachable([down]).startswith(
        f"cannot reach 127.0.0.1:{down.split(':')[2][:-2]} (ConnectionRefusedError")
    # Through the proxy the environment names, as the download would go.
    monkeypatch.setenv("http_proxy", up.removesuffix("/x"))
    assert datasets.unreachable(["http://no-such-host.invalid/data.tar.gz"]) is None
    no_proxies(monkeypatch)

    def hanging_lookup(*args, **kwargs):
        time.sleep(10)
        raise OSError("a lookup that never answers")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_lookup)
    start = time.monotonic()
    why = datasets.unreachable(["https://www.cs.toronto.edu/x"], seconds=0.5)
    assert why == "cannot reach www.cs.toronto.edu:443 (no answer within 0.5 s)"
    assert time.monotonic() - start < 3


class GacdOfflineDummy(tfds.core.GeneratorBasedBuilder):
    """Four generated examples: prepared without any network."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"image": tfds.features.Image(shape=(4, 4, 3)),
             "label": tfds.features.ClassLabel(num_classes=2)}))

    def _split_generators(self, dl_manager):
        return {"test": self._generate_examples()}

    def _generate_examples(self):
        for i in range(4):
            yield i, {"image": np.full((4, 4, 3), i, np.uint8), "label": i % 2}


def test_probe_runs_only_when_tfds_has_to_download(tmp_path, monkeypatch):
    name = "gacd_offline_dummy"
    down = f"http://127.0.0.1:{closed_port()}/x"
    monkeypatch.setitem(datasets.TFDS_SOURCES, name, down)
    monkeypatch.setattr(datasets, "TFDS_BUCKET", down)
    calls = []
    probe = datasets.unreachable
    monkeypatch.setattr(datasets, "unreachable", lambda urls: calls.append(urls) or probe(urls))
    original = DatasetBuilder.__dict__["download_and_prepare"]

    def load():
        with datasets._fail_fast_offline(name):
            return tfds.load(name, split="test", batch_size=-1, data_dir=str(tmp_path))

    with pytest.raises(ConnectionError, match="cannot reach 127.0.0.1"):
        load()  # not prepared: tfds would download, the probe stops it
    assert calls == [[down, down]]
    assert DatasetBuilder.__dict__["download_and_prepare"] is original  # restored
    tfds.load(name, split="test", batch_size=-1, data_dir=str(tmp_path))  # prepare it
    calls.clear()
    assert sorted(tfds.as_numpy(load())["label"].tolist()) == [0, 0, 1, 1]
    assert calls == []  # prepared: no download, no probe
    assert DatasetBuilder.__dict__["download_and_prepare"] is original


BLOCKER = """
import pathlib, socket, time

pathlib.Path({marker!r}).write_text("network blocked")


def refused(*args, **kwargs):
    raise OSError(101, "Network is unreachable (blocked by the test)")


def silent(*args, **kwargs):
    time.sleep(600)


socket.getaddrinfo = {mode}
socket.socket.connect = refused
"""


@pytest.mark.parametrize("mode, why", [
    ("refused", "OSError: [Errno 101] Network is unreachable (blocked by the test)"),
    ("silent", "no answer within 3 s"),
])
def test_program_without_data_dir_fails_offline_in_seconds(tmp_path, monkeypatch, mode, why):
    no_proxies(monkeypatch)
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    marker = tmp_path / "blocked"
    (blocker / "sitecustomize.py").write_text(
        textwrap.dedent(BLOCKER.format(marker=str(marker), mode=mode)))
    monkeypatch.setenv("PYTHONPATH", str(blocker))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))  # nothing prepared there
    out = tmp_path / "out"
    start = time.monotonic()
    result = run_program("train_teacher", "--arch=resnet8", "--epochs=1", "--batch_size=8",
                         "--train_attack_steps=1", "--attack_steps=1", "--val_examples=0",
                         "--verbose=0", f"--model_dir={out}", timeout=120)
    seconds = time.monotonic() - start
    assert marker.exists()  # the program really ran without a network
    assert result.returncode == 1, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == (
        "error: download of cifar10 via tensorflow-datasets failed (ConnectionError: cannot "
        f"reach www.cs.toronto.edu:443 ({why})); offline, pass --data_dir=DIR with the "
        "official cifar10 binary files"), result.stderr[-3000:]
    assert sum(line.startswith("error:") for line in lines) == 1
    assert "Traceback" not in result.stderr
    assert seconds < 30, seconds
    assert not (out / "model.keras").exists()
