"""raysem: knowledge learning with parameter-efficient fine-tuning, measured by target semantic distance, on Ray."""

__version__ = "0.1.0"
