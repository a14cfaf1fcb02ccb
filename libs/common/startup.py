"""How every service reads its settings at start: a bad configuration is one clear line
on stderr and exit status 78 (EX_CONFIG), never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from libs.common.settings import EXIT_CONFIG, Settings, SettingsError


def settings_or_exit(service: str, env: Mapping[str, str] | None = None) -> Settings:
    """The settings from the environment, checked for production (``refuse_unsafe``)."""
    try:
        settings = Settings.from_env(env)
        settings.refuse_unsafe()
    except SettingsError as exc:
        # Logging is not configured yet (its own settings may be what failed): one line.
        print(f"{service}: refusing to start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CONFIG) from None
    return settings
