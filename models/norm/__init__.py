"""Normalization + activation blocks: ``norm(C, apply_act=True)``: (N, C, H, W) -> (N, C, H, W).

A block class may declare, for the model builder and the models:
``conv_bias`` (do the convolutions before it need a bias), ``act_layer`` (the activation used
where a model applies one on its own, e.g. after a residual sum) and ``prepare_model(model)``
(a change to the whole model: initialization, weight reparametrization).
"""
from models.norm.basic import BatchNormAct, NoNormAct

__all__ = ["BatchNormAct", "NoNormAct"]
