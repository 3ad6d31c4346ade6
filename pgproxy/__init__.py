"""pgproxy: a PostgreSQL wire-protocol proxy with a human in the loop."""

__version__ = "0.1.0"
