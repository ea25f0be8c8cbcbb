"""Atomic publication of one version folder ``BASE/NAME/N``."""

import os
import shutil
import tempfile

from gacd_tf.errors import ConfigError
from gacd_tf.serving.versions import existing_versions

TMP_PREFIX = ".tmp-export-"  # not an integer: TF Serving ignores it


def _check_export_dir(export_dir):
    if not export_dir:
        raise ConfigError("export_dir is required: the model base path BASE/NAME")
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise ConfigError(f"export_dir={export_dir} is a file; pass a folder BASE/NAME"
                          ).on("export_dir")
    try:
        os.makedirs(export_dir, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"export_dir={export_dir} cannot be created ({err.strerror}); "
                          "choose another folder").on("export_dir") from err
    if not os.access(export_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"export_dir={export_dir} is not writable; choose another folder"
                          ).on("export_dir")


def _exists_error(target):
    err = ConfigError(f"version folder {target} already exists; pass another version, "
                      "version=None for the next free one, or overwrite=True to replace it")
    err.target = target  # for a program to re-word in its flags
    return err.on("version")


def write_version(export_dir, write, version=None, overwrite=False):
    """Writes one version folder atomically: ``write(tmp)``, then a rename.

    ``write`` fills a temporary sibling folder ``BASE/NAME/.tmp-export-*``
    (a name TF Serving ignores); only after it returns is that folder renamed
    to ``BASE/NAME/N`` (``os.rename``, atomic on one file system). If
    ``write`` raises, or the process is interrupted, no integer-named folder
    appears (a killed process may leave a ``.tmp-export-*`` folder behind,
    which is safe to delete). With ``overwrite`` an existing version is moved
    aside, the new one renamed in, and the old one deleted: two renames, so a
    server polling in between may briefly miss that version, but never sees
    a half-written one.

    Args:
        export_dir: the model base path ``BASE/NAME`` (created if missing).
        write: callable ``write(folder)`` writing the version's files.
        version: integer ``N >= 0``; ``None`` takes the next free integer
            (highest existing + 1, or 1).
        overwrite: replace an existing version ``N``.

    Returns:
        the path ``BASE/NAME/N`` (a str).

    Raises:
        ConfigError: bad ``export_dir`` or ``version``, or the version exists
            without ``overwrite``.

    Example:
    >>> write_version("exports/net", lambda d: open(f"{d}/x", "w").close())  # doctest: +SKIP
    'exports/net/1'
    """
    export_dir = os.fspath(export_dir)
    _check_export_dir(export_dir)
    if version is None:
        versions = existing_versions(export_dir)
        version = versions[-1] + 1 if versions else 1
    elif isinstance(version, bool) or int(version) != version or version < 0:
        raise ConfigError(f"version={version} must be an integer >= 0").on("version")
    target = os.path.join(export_dir, str(int(version)))
    if os.path.lexists(target) and not overwrite:
        raise _exists_error(target)
    tmp = tempfile.mkdtemp(dir=export_dir, prefix=TMP_PREFIX)
    old = None
    try:
        write(tmp)
        if os.path.lexists(target):
            if not overwrite:
                raise _exists_error(target)
            old = tempfile.mkdtemp(dir=export_dir, prefix=TMP_PREFIX + "old-")
            old = os.path.join(old, "previous")
            os.rename(target, old)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.lexists(target):
            os.rename(old, target)  # put the previous version back
        raise
    finally:
        if old is not None:
            shutil.rmtree(os.path.dirname(old), ignore_errors=True)
    return target
