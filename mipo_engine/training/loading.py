"""The model to train: loaded from a catalogue name, path or hub id, LoRA-wrapped on request.

Settings come from a ``TrainConfig`` (``model``, ``device``, ``lora_r``, ``lora_alpha``).
"""

from __future__ import annotations

from typing import Any

from mipo_engine.errors import ConfigError


def use_cuda(config: Any) -> bool:
    """Train on the GPU when one is visible and ``config.device`` allows it."""
    import torch

    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was requested but no GPU is visible", key="device")
    return config.device != "cpu" and torch.cuda.is_available()


def disable_dropout(model: Any) -> None:
    """Preference losses compare the policy with a reference: dropout would make D != 0
    at step 0 and add noise to every log-ratio (TRL disables it for the same reason)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def load_policy(config: Any, *, cuda: bool) -> tuple[Any, Any, str]:
    """The model to train (LoRA-wrapped when ``lora_r``), its tokenizer and resolved path.

    Weights: fp32 on CPU; on GPU, fp32 master weights with bf16 autocast for a full
    fine-tune, bf16 frozen base weights for LoRA (the adapters stay fp32).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mipo_engine.chat import ensure_chat_template
    from mipo_engine.models import resolve_model

    try:
        path = resolve_model(config.model)
    except FileNotFoundError as error:
        raise ConfigError(str(error), key="model") from None
    dtype = torch.bfloat16 if (cuda and config.lora_r) else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as error:
        raise ConfigError(f"cannot load model {path!r}: {error}", key="model") from None
    ensure_chat_template(tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.use_cache = False
    disable_dropout(model)
    if config.lora_r:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha or 2 * config.lora_r,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return model, tokenizer, path
