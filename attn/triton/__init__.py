"""Triton kernels of attn (the ``triton`` backend)."""
