"""Steering vectors (build, save, load, GGUF), fused application during generation, test-time scaling loops."""
