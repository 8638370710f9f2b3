"""model_loader."""
