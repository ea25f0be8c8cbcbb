"""A kill stand-in for AutoAttack's resume tests: an exception raised before a chosen batch."""


class Interrupted(Exception):
    pass


def interrupt_at(aa, attack_name, call):
    """Makes ``aa`` raise :class:`Interrupted` before the ``call``-th batch of ``attack_name``."""
    build, calls = aa._attack_fn, []

    def attack_fn(name, *args):
        fn = build(name, *args)

        def counted(*args):
            if name == attack_name:
                calls.append(1)
                if len(calls) == call:
                    raise Interrupted()
            return fn(*args)
        return counted
    aa._attack_fn = attack_fn
