"""mae-tracker: masked-autoencoder experiments on jet images, tracked in MLflow."""

__version__ = "0.1.0"
