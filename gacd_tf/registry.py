"""A tiny name -> factory registry shared by models, attacks and methods.

Adding a model, attack or method is one new file plus one ``@REGISTRY.register``
line; nothing else needs editing.
"""

from gacd_tf.errors import ConfigError


class Registry:
    """Maps names to factories.

    Args:
        kind: what is registered ("model", "attack", ...), used in messages.

    Example:
    >>> MODELS = Registry("model")
    >>> @MODELS.register("tiny")
    ... def tiny(num_classes):
    ...     ...
    >>> MODELS.get("tiny")  # doctest: +SKIP
    """

    def __init__(self, kind):
        self.kind = kind
        self._entries = {}

    def register(self, name):
        def decorator(factory):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = factory
            return factory

        return decorator

    def get(self, name):
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self):
        return sorted(self._entries)

    def __contains__(self, name):
        return name in self._entries
