"""The client page (templates and static files), installed as ``wsgate.web``."""
