"""meshserve model: PyTorch inference over the Open Inference Protocol (KServe V2)."""
