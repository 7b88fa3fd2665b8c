"""The fast GGUF reader lives in the runtime package; re-exported for the build tools."""

from fslm_edge.ggufread import ARRAY, STRING, Field, GGUFFile, Tensor

__all__ = ["ARRAY", "STRING", "Field", "GGUFFile", "Tensor"]
