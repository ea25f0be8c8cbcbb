"""The programs' flag machinery: the absl flag holder, the ``DEFINE_*`` helpers
that record which flags are gacd_tf's, one-line flag errors, and the
translation of library errors into flag names.

Every program defines its flags with these helpers (in one ``define_flags``
function) and runs its ``main`` through :func:`run`. This module imports no
other part of gacd_tf but :mod:`gacd_tf.errors`, so any program module may
import it.
"""

import contextlib
import math
import re
import sys

from absl import app, flags

from gacd_tf.errors import GacdError

FLAGS = flags.FLAGS
_DEFINED = []  # names of the flags this package defines, in definition order


def _track(define):
    def wrapper(name, *args, **kwargs):
        _DEFINED.append(name)
        return define(name, *args, **kwargs)

    return wrapper


def _define_float(name, default, help, positive=False, **kwargs):
    """``flags.DEFINE_float`` that refuses nan and inf (and, if ``positive``, values <= 0)."""
    holder = flags.DEFINE_float(name, default, help, **kwargs)
    flags.register_validator(name, lambda v: v is None or math.isfinite(v),
                             message="must be a finite number")
    if positive:
        flags.register_validator(name, lambda v: v is None or v > 0, message="must be > 0")
    return holder


DEFINE_string = _track(flags.DEFINE_string)
DEFINE_integer = _track(flags.DEFINE_integer)
DEFINE_float = _track(_define_float)
DEFINE_bool = _track(flags.DEFINE_bool)
DEFINE_enum = _track(flags.DEFINE_enum)
DEFINE_list = _track(flags.DEFINE_list)


def flag_values():
    """The values of this package's flags, as a JSON-able dict."""
    return {name: FLAGS[name].value for name in _DEFINED if name in FLAGS}



def flag_message(err, flag_of=None):
    """``err``'s message with its library arguments named as the flags behind them.

    Args:
        err: a :class:`gacd_tf.errors.GacdError`; one made ``.on(*arguments)``
            writes each as ``argument=value`` in its message.
        flag_of: library argument -> flag name, where they differ (by default
            an argument names the flag of the same name, when the program has it).
    """
    message = str(err)
    for argument in getattr(err, "arguments", ()):
        flag = (flag_of or {}).get(argument, argument)
        if flag in FLAGS:
            message = re.sub(rf"(?<![\w-]){re.escape(argument)}=", f"--{flag}=", message)
    return message


@contextlib.contextmanager
def arguments_as_flags(**flag_of):
    """Re-words a library error about argument A as one about flag ``flag_of[A]``.

    Example:
    >>> with arguments_as_flags(examples="test_examples"):  # doctest: +SKIP
    ...     load_split("cifar10", "test", data_dir, examples=FLAGS.test_examples)
    """
    try:
        yield
    except GacdError as err:
        if not set(getattr(err, "arguments", ())) & set(flag_of):
            raise
        reworded = type(err).__new__(type(err))  # same class and fields, the message in flags
        reworded.__dict__.update(err.__dict__)
        reworded.args = (flag_message(err, flag_of),)
        raise reworded from None


def run(main):
    """``app.run(main)``, turning a bad flag or a GacdError into one line on stderr and exit 1."""

    def guarded(argv):
        try:
            return main(argv)
        except GacdError as err:
            print(f"error: {flag_message(err)}", file=sys.stderr)
            sys.exit(1)

    app.run(guarded, flags_parser=_parse_flags)


def _parse_flags(argv):
    """absl's flag parsing, but a bad flag ends the program with one ``error:`` line."""
    try:
        return FLAGS(argv)
    except flags.Error as err:
        problems = []
        for line in str(err).splitlines():  # absl: one line per failed validator
            if line.startswith("flags ") and ": --" in line:
                line = line[line.index(": --") + 2:]  # drop "flags a=1, b=2: "
            problems.append(line.strip())
        message = "; ".join(p for p in problems if p)
        print(f"error: {message} (fix the flag; --helpshort lists them)", file=sys.stderr)
        sys.exit(1)
