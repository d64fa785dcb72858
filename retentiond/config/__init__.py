"""The config: models, loading with error rendering, and secrets."""

from retentiond.config.load import LoadedConfig, config_path, load_config, rule_hash
from retentiond.config.model import Config, FilesStore, Hold, Rule, SqlStore

__all__ = [
    "Config",
    "FilesStore",
    "Hold",
    "LoadedConfig",
    "Rule",
    "SqlStore",
    "config_path",
    "load_config",
    "rule_hash",
]
