"""Local pooling layers and global pooling heads, one module per method family.

Local: ``pool(C, kernel_size=2, stride=2)``: (N, C, H, W) -> (N, C, H_out, W_out) with
``H_out = floor((H - kernel_size) / stride) + 1``. Global: ``global_pool(C)``: (N, C, H, W) ->
(N, out_features), with ``.out_features`` for sizing the classifier.
"""
from models.pooling.adapool import AdaPool, ada_pool2d, dice_pool2d
from models.pooling.basic import AvgPool, MaxPool
from models.pooling.global_pool import (GGeM, GeM, GlobalAvgMaxPool, GlobalAvgPool, GlobalCatAvgMaxPool, GlobalMaxPool,
                                        GlobalSoftPool, SpatialPyramidPool)
from models.pooling.lp import LpPool
from models.pooling.maxavg import GatedPool, MixedPool, TreePool
from models.pooling.softpool import SoftPool, soft_pool2d, soft_pool2d_reference
from models.pooling.stochastic import StochasticPool

__all__ = [
    "AdaPool", "AvgPool", "GatedPool", "LpPool", "MaxPool", "MixedPool", "SoftPool", "StochasticPool", "TreePool",
    "GGeM", "GeM", "GlobalAvgMaxPool", "GlobalAvgPool", "GlobalCatAvgMaxPool", "GlobalMaxPool", "GlobalSoftPool",
    "SpatialPyramidPool", "ada_pool2d", "dice_pool2d", "soft_pool2d", "soft_pool2d_reference",
]
