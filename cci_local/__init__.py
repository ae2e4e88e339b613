"""cci-local: local-first Community-Cross-Instruct."""

__version__ = "0.1.0"
