"""Real-vs-fake detection: the detector CNN, its baselines, scores and robustness checks.

    from pipeline.detect import score_images
    p_fake = score_images("models/detector.pt", images_uint8_nhwc)  # (N,) in [0, 1]

The DVC stage is `stages/detect.py` (work in `run.py`); metrics are in `scores.py`.
"""

from pipeline.detect.model import Detector, load_detector, predict, save_detector, score_images

__all__ = ["Detector", "load_detector", "predict", "save_detector", "score_images"]
