"""The package version (one place; the Hub client sends it as library_version)."""

__version__ = "0.1.0"
