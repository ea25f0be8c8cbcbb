"""Exceptions raised by gacd_tf for bad user input.

Programs catch :class:`GacdError` and print its message as one line, so every
message must name the input (file, argument, model) and say what to do.
"""


class GacdError(Exception):
    """Base class of every user-facing error in gacd_tf.

    Messages name library arguments, never command-line flags. An error about
    arguments says so with :meth:`on` and writes each as ``ARGUMENT=VALUE`` in
    its message; a program, which knows the flag behind each argument, then
    names the flag instead (``examples=11 is out of range`` becomes
    ``--test_examples=11 is out of range``).
    """

    argument = None  # the argument the error is about (the first of ``arguments``)
    arguments = ()

    def on(self, *arguments):
        """This error, marked as being about library ``arguments`` (the first one first)."""
        self.arguments = arguments
        self.argument = arguments[0] if arguments else None
        return self


class DataError(GacdError, ValueError):
    """A data folder, file or array is missing or malformed."""


class ModelError(GacdError, ValueError):
    """A model is unknown, malformed, or does not fit the data."""


class ConfigError(GacdError, ValueError):
    """Flags or arguments are out of range or contradict each other."""


class TrainingError(GacdError, RuntimeError):
    """Training cannot go on: a numerical fault, or a checkpoint that does not fit."""


class ArgumentError(ConfigError):
    """A library argument with a bad value; ``argument`` says which one.

    The message names the argument (``"decay_epochs=9,3: must increase"``);
    a program, which knows the flag behind each argument, re-words it
    (``--lr_decay_epochs=9,3: must increase``).
    """

    def __init__(self, argument, value, problem):
        super().__init__(f"{argument}={value}: {problem}")
        self.value, self.problem = value, problem
        self.on(argument)
