"""A tiny name -> factory registry shared by models, attacks, methods and datasets.

Adding a model, attack or method is one new file that registers itself with
one ``@REGISTRY.register("name")`` line, plus the line in its package's
``__init__.py`` that imports it (which runs the registration).
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
        self._elsewhere = {}

    def registered_by(self, name, module):
        """Says that ``name`` is registered when ``module`` (a higher package) is imported,
        so asking for it before then names the import to make."""
        self._elsewhere[name] = module

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
            where = (f" ({name!r} is registered by {self._elsewhere[name]}: import it first)"
                     if name in self._elsewhere else "")
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}{where}"
            ) from None

    def names(self):
        return sorted(self._entries)

    def __contains__(self, name):
        return name in self._entries
