"""Settings read from the environment and `$TUNERY_HOME/config.toml`, typed once here."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from tunery.errors import ConfigError

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"


def home() -> Path:
    """The tunery home: `$TUNERY_HOME`, else `~/.tunery`. Caches, jobs and artifacts live here."""
    return Path(os.environ.get("TUNERY_HOME") or Path.home() / ".tunery").expanduser()


@dataclass(frozen=True)
class Settings:
    """User settings. `config.toml` example:

        default_base_model = "gemma-3-270m"
        [aliases]
        "gemini-2.0-flash-001" = "smollm2-135m-instruct"
    """

    default_base_model: str = DEFAULT_BASE_MODEL  # what Gemini aliases and an omitted --base-model mean
    aliases: dict[str, str] = field(default_factory=dict)  # extra or overriding name -> model mappings


def load_settings(root: Path | None = None) -> Settings:
    """Read `config.toml` under the home (if present); `TUNERY_DEFAULT_BASE_MODEL` overrides the default."""
    path = (root or home()) / "config.toml"
    data: dict = {}
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(str(path), f"not valid TOML: {exc}") from exc
    default = os.environ.get("TUNERY_DEFAULT_BASE_MODEL") or data.get("default_base_model", DEFAULT_BASE_MODEL)
    aliases = data.get("aliases", {})
    if not isinstance(default, str) or not default:
        raise ConfigError(f"{path}: default_base_model", f"expected a model name, found {default!r}")
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        raise ConfigError(f"{path}: [aliases]", "expected a table of name = \"model\" strings")
    return Settings(default_base_model=default, aliases=dict(aliases))
