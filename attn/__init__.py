"""attn: prefix-aware attention for LLM decoding (Hydragen and ChunkAttention) on
interchangeable backends (ThunderKittens, Triton, PyTorch).

Importing attn compiles nothing and needs no GPU.
"""
from .cache import PrefixKVCache
from .dispatch import available_backends, backends, get_backend, use_backend
from .errors import AttnError, BackendUnavailableError, CacheFullError, NoBackendError
from .ops import chunk_attention, merge_states, shared_prefix_attention
from .table import ChunkTable

__version__ = "0.1.0"

__all__ = [
    "shared_prefix_attention",
    "chunk_attention",
    "merge_states",
    "ChunkTable",
    "PrefixKVCache",
    "use_backend",
    "available_backends",
    "backends",
    "get_backend",
    "AttnError",
    "BackendUnavailableError",
    "NoBackendError",
    "CacheFullError",
]
