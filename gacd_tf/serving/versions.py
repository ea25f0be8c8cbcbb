"""The integer version folders of a model base path."""

import os


def existing_versions(export_dir):
    """The versions present under ``export_dir`` (``BASE/NAME``), ascending.

    A version is a sub-folder whose name is a non-negative integer, the rule
    TF Serving uses; temporary folders (``.tmp-...``) are not versions.

    Args:
        export_dir: the model base path ``BASE/NAME``; may not exist yet.

    Returns:
        sorted list of ``int``; empty when the folder is missing or has none.

    Example:
    >>> existing_versions("exports/resnet8")  # doctest: +SKIP
    [1, 2]
    """
    try:
        names = os.listdir(export_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(
        int(name)
        for name in names
        if name.isdigit() and name.isascii() and os.path.isdir(os.path.join(export_dir, name))
    )
