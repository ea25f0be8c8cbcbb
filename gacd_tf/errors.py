"""Exceptions raised by gacd_tf for bad user input.

Programs catch :class:`GacdError` and print its message as one line, so every
message must name the input (file, flag, model) and say what to do.
"""


class GacdError(Exception):
    """Base class of every user-facing error in gacd_tf."""


class DataError(GacdError, ValueError):
    """A data folder, file or array is missing or malformed."""


class ModelError(GacdError, ValueError):
    """A model is unknown, malformed, or does not fit the data."""


class ConfigError(GacdError, ValueError):
    """Flags or arguments are out of range or contradict each other."""


class TrainingError(GacdError, RuntimeError):
    """Training cannot go on: a numerical fault, or a checkpoint that does not fit."""
