"""ThunderKittens CUDA-extension kernels of attn (the ``tk`` backend)."""
