"""livesense: streaming, real-time multimodal perception."""

__version__ = "0.1.0"
