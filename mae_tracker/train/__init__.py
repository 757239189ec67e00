"""Training arms (pretrain, finetune, probe, scratch) and their MLflow tracking."""
