"""The package version, in a module of its own so that run records can read it without importing
the package's ``__init__`` (which imports everything that writes them)."""

__version__ = "0.1.0"
