"""Models: MAE (ViT and hybrid Conv+ViT encoders) and classifiers. Knows nothing of data files."""
