"""The seeds' synthetic experiments (``mipo lab``).

- ``run_toy_mio``: seed 000's toy model (sec. 4.1, Fig. 2), DPO vs MIO likelihood dynamics.
- ``run_did_synthetic``: seed 002's softmax-policy experiment (sec. 3.5, App. J.1, Fig. 1
  and 7), JS divergence to the target policy under DPO and its baselines.

Each writes ``results.json``, a markdown table ``results.md``, a CSV and a PNG figure.
"""

from mipo_engine.lab.did_synthetic import (
    DID_METHODS,
    DidSyntheticSettings,
    run_did_synthetic,
)
from mipo_engine.lab.toy_mio import (
    TOY_METHODS,
    TOY_SCENARIOS,
    LabConfigError,
    ToyMioSettings,
    run_toy_mio,
)

__all__ = [
    "DID_METHODS",
    "TOY_METHODS",
    "TOY_SCENARIOS",
    "DidSyntheticSettings",
    "LabConfigError",
    "ToyMioSettings",
    "run_did_synthetic",
    "run_toy_mio",
]
