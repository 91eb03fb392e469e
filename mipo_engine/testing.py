"""Fixtures built locally for tests and benchmarks, with no download.

- A tiny causal LM with a tiny tokenizer, built with random weights. Used by the test suite
  and by ``benchmarks/run.py --quick``: it exercises every code path (chat template,
  batching, scoring, training, saving) in seconds.
- ``synthetic_generations``: a generations artifact of random text with planted defects, at
  any size, for the export filters' tests and benchmarks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mipo_engine.artifacts.schemas import GENERATIONS, validate_frame

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


# --------------------------------------------------------------------------------------------
# Synthetic generations (benchmarks and tests)
# --------------------------------------------------------------------------------------------

VOCABULARY_SIZE = 2000


def _random_texts(
    rng: np.random.Generator, count: int, words: int, vocabulary: pl.Series
) -> pl.Series:
    picks = rng.integers(0, len(vocabulary), size=count * words)
    return vocabulary.gather(picks).reshape((count, words)).arr.join(" ")


def synthetic_generations(
    n_pairs: int,
    *,
    seed: int = 0,
    pairs_per_prompt: int = 2,
    response_words: int = 60,
    defect_rate: float = 0.01,
) -> pl.DataFrame:
    """``n_pairs`` generations rows with random text, built column-wise (for benchmarks).

    Pairs come ``pairs_per_prompt`` to a prompt (missing-context strategy, rendered with the
    plain default template). A ``defect_rate`` share of rows each is: an exact duplicate of
    an earlier pair, a pair with identical responses, a pair with an empty rejected response,
    and a truncated pair, so every filter has work to do.
    """
    if n_pairs < 1 or pairs_per_prompt < 1:
        raise ValueError("n_pairs and pairs_per_prompt must be >= 1")
    if not 0.0 <= defect_rate <= 0.25:
        raise ValueError(f"defect_rate must be in [0, 0.25], got {defect_rate}")
    rng = np.random.default_rng(seed)
    vocabulary = pl.Series([f"w{index}" for index in range(VOCABULARY_SIZE)])
    n_prompts = -(-n_pairs // pairs_per_prompt)
    prompt_index = np.arange(n_pairs) // pairs_per_prompt
    prompts = _random_texts(rng, n_prompts, 12, vocabulary).gather(prompt_index)
    contexts = _random_texts(rng, n_prompts, 15, vocabulary).gather(prompt_index)
    chosen = _random_texts(rng, n_pairs, response_words, vocabulary)
    rejected = _random_texts(rng, n_pairs, response_words, vocabulary)
    frame = pl.DataFrame(
        {
            "id": pl.Series(np.arange(n_pairs)).cast(pl.String).str.pad_start(8, "0"),
            "prompt_id": pl.Series(prompt_index).cast(pl.String).str.pad_start(8, "0"),
            "prompt": prompts,
            "context": contexts,
            "chosen": chosen,
            "rejected": rejected,
        }
    ).with_columns(
        pl.lit("missing-context").alias("strategy"),
        pl.lit("none").alias("negative_source"),
        pl.concat_str(
            pl.lit("<bos>User: "),
            "prompt",
            pl.lit("\n\nMy requirements for your answer:\n"),
            "context",
            pl.lit("\n\nAssistant:\n"),
        ).alias("chosen_input"),
        pl.concat_str(pl.lit("<bos>User: "), "prompt", pl.lit("\n\nAssistant:\n")).alias(
            "rejected_input"
        ),
        pl.lit("synthetic").alias("model"),
        pl.lit(seed, pl.Int64).alias("seed"),
        pl.lit("stop").alias("chosen_finish_reason"),
        pl.lit("stop").alias("rejected_finish_reason"),
        pl.lit(response_words, pl.Int64).alias("chosen_tokens"),
        pl.lit(response_words, pl.Int64).alias("rejected_tokens"),
    )
    # Defects: 0 duplicate of the previous pair, 1 identical, 2 empty rejected, 3 truncated.
    index = np.arange(n_pairs)
    kind = np.minimum(rng.random(n_pairs) // max(defect_rate, 1e-12), 4).astype(np.int64)
    source = np.where((kind == 0) & (index > 0), index - 1, index)
    frame = frame.select(pl.col("id"), pl.exclude("id").gather(source))
    kinds = pl.Series("kind", kind)
    return validate_frame(
        frame.with_columns(
            pl.when(kinds == 1)
            .then(pl.col("chosen"))
            .when(kinds == 2)
            .then(pl.lit(""))
            .otherwise(pl.col("rejected"))
            .alias("rejected"),
            pl.when(kinds == 3)
            .then(pl.lit("length"))
            .otherwise(pl.col("chosen_finish_reason"))
            .alias("chosen_finish_reason"),
        ),
        GENERATIONS,
    )
