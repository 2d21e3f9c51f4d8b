"""Defaults that the config file's models and the engine's settings share, written once.

The config file's models apply them for an operator; the engine's stage settings apply the
same values when a test or a benchmark builds an engine without a config file.
"""

from __future__ import annotations

__all__ = ["DEFAULT_LANGUAGE", "RETRY_INITIAL_SECONDS", "RETRY_MAX_SECONDS", "SEND_WORKERS"]

DEFAULT_LANGUAGE = "en"  # mail_language: the templates' own text, upstream's words
SEND_WORKERS = 4  # mail_max_connections: concurrent relay connections and send workers
RETRY_INITIAL_SECONDS = 30.0  # retry_initial_seconds: first wait after a deferred attempt
RETRY_MAX_SECONDS = 3600.0  # retry_max_seconds: the longest wait between attempts
