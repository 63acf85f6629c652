"""Anomaly detection in diffusion MRI: data, models, noise, metrics, figures."""
__version__ = "0.1.0"
