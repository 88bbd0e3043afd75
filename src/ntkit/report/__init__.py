"""The `ntkit report`: the NTK theory run end to end on real training, as figures, metrics and HTML."""

from ._pipeline import generate_report
from .config import ConfigError, load_config, resolve_config

__all__ = ["ConfigError", "generate_report", "load_config", "resolve_config"]
