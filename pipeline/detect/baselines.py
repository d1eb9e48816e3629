"""Baseline detectors the trained CNN is compared with.

1. The GAN's own discriminator. It was trained to output a high logit for REAL images
   (`BCEWithLogitsLoss` with real = 1), so P(fake) = sigmoid(-logit). A converged GAN's D is a
   weak detector by design (Goodfellow et al. 2014: at equilibrium D(x) = 1/2), which is exactly
   why it is worth reporting beside a dedicated detector.
2. A frequency-spectrum detector after Durall et al. 2020, "Watch your Up-Convolution: CNN Based
   Generative Deep Neural Networks are Failing to Reproduce Spectral Distributions" (CVPR):
   the azimuthally averaged log power spectrum of each image's 2-D FFT (a 1-D profile over
   radial frequency, min-max normalised per image as in their code) as features, and a
   logistic regression (scikit-learn) on top. Up-sampling layers leave excess or missing
   high-frequency energy that this profile exposes.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.imaging import to_unit_range


@torch.no_grad()
def discriminator_logits(D: torch.nn.Module, images: np.ndarray, labels: np.ndarray | None = None,
                         batch_size: int = 256, device: str | torch.device = "cpu",
                         num_classes: int = 0) -> np.ndarray:
    """D's logits float64 (N,) ("real" is high) for uint8 (N, H, W, C) images, D in eval mode;
    `labels` for a conditional D. A conditional D without labels (`num_classes` > 0): D's most
    "real" class, max_y D(x, y)."""
    D = D.to(device).eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = to_unit_range(images[i:i + batch_size], device)  # (B, C, H, W) in [-1, 1]
        if labels is not None:
            logits = D(x, torch.from_numpy(labels[i:i + batch_size]).long().to(device))
        elif num_classes:
            logits = torch.stack([D(x, torch.full((len(x),), y, device=device))
                                  for y in range(num_classes)]).amax(0)  # (B,)
        else:
            logits = D(x)
        out.append(logits.float().reshape(-1).cpu())
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def discriminator_scores(D: torch.nn.Module, images: np.ndarray, labels: np.ndarray | None = None,
                         batch_size: int = 256, device: str | torch.device = "cpu",
                         num_classes: int = 0) -> np.ndarray:
    """P(fake) = sigmoid(-D(x)) for uint8 (N, H, W, C) images (`discriminator_logits`' args)."""
    logits = discriminator_logits(D, images, labels, batch_size, device, num_classes)
    return 1.0 / (1.0 + np.exp(logits))


def azimuthal_spectrum(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) -> (N, R) features: the log power spectrum (of the gray image)
    averaged over rings of integer radius around the zero frequency, min-max scaled to [0, 1]."""
    gray = images.astype(np.float64).mean(axis=-1)  # (N, H, W)
    spectrum = np.fft.fftshift(np.fft.fft2(gray), axes=(-2, -1))
    log_power = 20 * np.log10(np.abs(spectrum) + 1e-8)  # (N, H, W), dB
    h, w = gray.shape[1:]
    yy, xx = np.indices((h, w))
    radius = np.hypot(yy - h // 2, xx - w // 2).round().astype(np.int64).ravel()  # (H*W,)
    counts = np.bincount(radius)
    # Ring means for all images at once: one weighted bincount per image would loop in Python.
    onehot = np.zeros((h * w, len(counts)))
    onehot[np.arange(h * w), radius] = 1.0 / counts[radius]
    profile = log_power.reshape(len(images), -1) @ onehot  # (N, R)
    lo, hi = profile.min(axis=1, keepdims=True), profile.max(axis=1, keepdims=True)
    return (profile - lo) / np.maximum(hi - lo, 1e-12)


class SpectrumDetector:
    """Logistic regression on `azimuthal_spectrum` features (standardised)."""

    def __init__(self, seed: int = 0) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.model = make_pipeline(StandardScaler(),
                                   LogisticRegression(max_iter=2000, random_state=seed))

    def fit(self, real: np.ndarray, fake: np.ndarray) -> SpectrumDetector:
        x = np.concatenate([azimuthal_spectrum(real), azimuthal_spectrum(fake)])
        y = np.r_[np.zeros(len(real)), np.ones(len(fake))]
        self.model.fit(x, y)
        return self

    def predict(self, images: np.ndarray) -> np.ndarray:
        """P(fake) (N,)."""
        return self.model.predict_proba(azimuthal_spectrum(images))[:, 1]
