"""The 嗨贝 (HB) exchange service."""

__version__ = "0.1.0"
