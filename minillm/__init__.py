"""minillm: every stage of LLM training, from raw bytes to RLHF, written from scratch to be read.

See docs/architecture.md for the map of modules and how data flows between them.
"""
from minillm.errors import MiniLLMError

__version__ = "0.1.0"
__all__ = ["MiniLLMError", "__version__"]
