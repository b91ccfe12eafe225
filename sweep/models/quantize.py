"""Child process that derives a quantized GGUF: ``python -m sweep.models.quantize SRC DST FTYPE THREADS``.

It runs apart from the orchestrator so that only child processes import llama_cpp.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    src, dst, ftype, threads = argv
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(ftype)
    params.nthread = int(threads)
    params.allow_requantize = True
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
    if rc != 0:
        print(f"llama_model_quantize returned {rc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
