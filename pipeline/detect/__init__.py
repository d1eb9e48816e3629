"""Real-vs-fake detection: the detector CNNs (binary, and the shipped one over real and each
forger family), their training with Blur+JPEG augmentation, baselines, scores, robustness.

    from pipeline.detect import score_images
    p_fake = score_images("models/detector.pt", images_uint8_nhwc)  # (N,) in [0, 1]

The DVC stage is `stages/detect.py` (work in `run.py`); metrics are in `scores.py`.
"""

from pipeline.detect.model import (
    Detector,
    SourceDetector,
    class_probs,
    load_detector,
    predict,
    save_detector,
    score_images,
)

__all__ = ["Detector", "SourceDetector", "class_probs", "load_detector", "predict",
           "save_detector", "score_images"]
