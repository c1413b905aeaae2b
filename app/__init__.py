"""Ferry: a large-file download server."""

__version__ = "0.1.0"
