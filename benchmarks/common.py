"""Helpers shared by the `make bench` scripts."""

from __future__ import annotations

from cci_local.rss import peak_rss_mb

__all__ = ["peak_rss_mb"]
