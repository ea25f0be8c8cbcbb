"""Output folders of the programs (light: no TensorFlow, so gacd-reproduce starts fast)."""

import os
import tempfile

from gacd_tf.errors import ConfigError


def prepare_output_dir(path, flag="--model_dir"):
    """Creates ``path`` if needed and checks it is writable."""
    if not path:
        raise ConfigError(f"{flag} is required: the folder where outputs are written")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{flag}={path} is a file, not a folder; choose another folder")
    try:
        os.makedirs(path, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-")
        probe.close()
    except OSError as err:
        raise ConfigError(f"{flag}={path} is not a writable folder ({err.strerror}); "
                          "choose another folder") from err
    return path
