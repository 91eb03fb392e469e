"""mipo-engine: preference data without human labels and mutual-information trainers."""

__version__ = "0.1.0"
