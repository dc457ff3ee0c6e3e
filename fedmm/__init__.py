"""fedmm: private federated learning of multimodal medical models across hospitals."""

__version__ = "0.1.0"
