"""The only owner of llama.cpp in fslm-edge.

Everything that touches llama-cpp-python lives in this package: loading models
(``native``), a model with its context, adapters, tokens and KV cache
(``model``), the one generation loop (``generate``), structured-output
grammars (``constraints``), log-likelihood scoring (``scoring``) and many
generations decoded together (``batch``).
"""

from .batch import BatchedDecoder, DecoderPool
from .generate import Generation, collect_text, stream_text
from .model import ClosedModelError, GPUUnavailableWarning, LoadedModel, ModelPool
from .native import Backend, amx_in_build, backend_info, native_lock, open_llama, quiet_stderr

__all__ = [
    "Backend",
    "BatchedDecoder",
    "ClosedModelError",
    "DecoderPool",
    "GPUUnavailableWarning",
    "Generation",
    "LoadedModel",
    "ModelPool",
    "amx_in_build",
    "backend_info",
    "collect_text",
    "native_lock",
    "open_llama",
    "quiet_stderr",
    "stream_text",
]
