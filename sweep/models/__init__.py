"""The models: the registry of bundled and local GGUF files, the GGUF reader, quantization, and
the llama.cpp tools built from llama-cpp-python's sdist."""
