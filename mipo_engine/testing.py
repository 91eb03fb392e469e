"""A tiny causal LM with a tiny tokenizer, built locally with random weights.

Used by the test suite and by ``benchmarks/run.py --quick``: it exercises every code path
(chat template, batching, scoring, training, saving) in seconds, with no download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_CORPUS = [
    "User: Assistant: the a an and or of to in is are was were be been it this that",
    "What is the capital of France? Paris is the capital of France.",
    "Give me a tip for learning to cook. Start with simple recipes and practice often.",
    "Keep it under 30 words. Use bullet points. End with a question. Be formal.",
    "I prefer short answers with examples. Explain like I am a beginner.",
    "0 1 2 3 4 5 6 7 8 9 10 100 #### The answer is: A B C D E",
    "Score: [RESULT] rubric criteria response feedback good bad yes no",
    "My requirements for your answer: please write clearly, kindly and concisely.",
]


def make_tiny_tokenizer(vocab_size: int = 384) -> Any:
    """A byte-level BPE tokenizer trained on a few sentences, with Gemma-like specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def make_tiny_model(
    path: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 32,
    layers: int = 2,
    vocab_size: int = 384,
) -> Path:
    """Save a random-weight Llama-style model and its tokenizer to ``path``; return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer = make_tiny_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
