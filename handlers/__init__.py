"""The built-in handlers, installed as ``wsgate.builtins``: ``echo``, ``chat`` and ``channels``."""
