"""``mipo run``: a YAML file declares the stages; the runner executes them in one folder."""

from mipo_engine.pipeline.config import PipelineConfig, load_pipeline
from mipo_engine.pipeline.runner import run_pipeline

__all__ = ["PipelineConfig", "load_pipeline", "run_pipeline"]
