"""Local pooling layers (``pool(C)``: (N, C, H, W) -> (N, C, H_out, W_out)) and global pooling heads
(``global_pool(C)``: (N, C, H, W) -> (N, out_features))."""
from models.pooling.basic import AvgPool, MaxPool
from models.pooling.global_pool import GlobalAvgPool, GlobalMaxPool

__all__ = ["AvgPool", "MaxPool", "GlobalAvgPool", "GlobalMaxPool"]
