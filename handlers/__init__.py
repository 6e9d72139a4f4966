"""The built-in handlers, installed as ``wsgate.builtins``: ``echo`` and ``chat``."""
