"""Build side of fslm-edge: training, LoRA export, merging, quantization (may import torch)."""
