"""Tables and names shared by the analysis commands: Markdown, CSV, file-safe names."""

import csv
import io
import os
import re


def format_value(value, digits=4):
    """A cell's text: floats rounded to ``digits``, None as an empty cell, lists joined."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.{digits}f}" if value == value else "nan"
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(v, digits) for v in value)
    return str(value)


def markdown_table(rows, columns, headers=None, digits=4):
    """A GitHub-flavoured Markdown table of ``rows`` (dicts) in ``columns`` order.

    Args:
        rows: list of dicts; missing keys give empty cells.
        columns: the keys to show, in order.
        headers: column titles (default: the keys).
        digits: decimals of float cells.

    Returns:
        The table as a string ending in a newline.

    Example:
    >>> print(markdown_table([{"k": 16, "acc": 0.5}], ["k", "acc"]), end="")
    | k | acc |
    | --- | --- |
    | 16 | 0.5000 |
    """
    headers = list(headers or columns)

    def cell(value):
        return format_value(value, digits).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows, columns):
    """``rows`` (dicts) as CSV text with a header line; floats keep full precision."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return out.getvalue()


def write_text(path, text):
    """Writes ``text`` to ``path`` atomically (temporary file, then rename)."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), ".tmp-" + os.path.basename(path))
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def slug(text):
    """A file-name-safe version of ``text`` (letters, digits, ``._-=``)."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", str(text)).strip("_") or "model"


def model_names(paths):
    """Short distinct names for model files: the run folder for ``model.keras``,
    else folder plus file stem; repeats get ``_2``, ``_3``...

    Example:
    >>> model_names(["runs/kd/model.keras", "runs/gacd/distilled.keras", "x/kd/model.keras"])
    ['kd', 'gacd_distilled', 'kd_2']
    """
    names = []
    for path in paths:
        path = os.path.normpath(os.fspath(path))
        folder = os.path.basename(os.path.dirname(os.path.abspath(path))) or "model"
        stem = os.path.basename(path)
        stem = stem[:-len(".keras")] if stem.endswith(".keras") else stem
        name = slug(folder if stem == "model" else f"{folder}_{stem}")
        candidate, i = name, 1
        while candidate in names:
            i += 1
            candidate = f"{name}_{i}"
        names.append(candidate)
    return names
