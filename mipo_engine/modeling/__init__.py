"""Token-level model computations shared by the backends and the trainer.

``tokenization`` turns (prompt, response) pairs into token ids with an exact boundary;
``logps`` computes the response tokens' log-probabilities from a causal LM. Scoring
(``backends/``) and training (``training/``) both import these, so a score and the trainer's
reference log-prob of the same pair come from one implementation.
"""
