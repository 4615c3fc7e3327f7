"""meshserve gateway: the public PredictionService."""
