"""gan-forensics: train GANs with Ray Train DDP, measure them, and catch their fakes."""

__version__ = "0.1.0"
