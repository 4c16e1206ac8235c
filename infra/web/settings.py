"""The console's settings, prefixed ``BALLAST_WEB_`` (CONTRACT.md, "Configuration")."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WebSettings(BaseSettings):
    """Parameters:
      host: address to bind (loopback unless told otherwise).
      port: TCP port.
      secret_key: signs session cookies; when unset one is generated once and kept in
        ``console_settings`` so sessions survive a restart.
      insecure_cookies: drop the cookie's Secure flag (only for plain http on another host
        than localhost, where browsers would not send a Secure cookie back).
      session_hours: how long a login lasts.
      refresh_s: auto-refresh period of live pages.
      page_size: rows per page.
      key_dir: where the console keeps each acting operator's signing key (one file per
        operator, owner-only): every action is a command signed by the operator who took it.
        Only the console's host holds these files; the workers see public keys only.
    """

    model_config = SettingsConfigDict(env_prefix="BALLAST_WEB_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8470, ge=0, le=65535)
    secret_key: str | None = None
    insecure_cookies: bool = False
    session_hours: int = Field(default=8, ge=1, le=24 * 7)
    refresh_s: int = Field(default=30, ge=5)
    page_size: int = Field(default=50, ge=5, le=500)
    key_dir: str = ".ballast/console-keys"


@lru_cache(maxsize=1)
def get_web_settings() -> WebSettings:
    return WebSettings()
