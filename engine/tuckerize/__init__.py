"""tuckerize engine: EVBMF rank selection, Tucker-2/SVD rewriting of ONNX CNNs, fine-tuning.

Kim et al., "Compression of Deep Convolutional Neural Networks for Fast and Low Power Mobile
Applications", ICLR 2016.
"""
from .vbmf import EVBMFResult, evbmf

__all__ = ["EVBMFResult", "evbmf"]
