"""meshserve preprocess: serves the registered scikit-learn preprocessor over gRPC."""
