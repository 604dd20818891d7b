"""Normalization + activation blocks: ``norm(C, apply_act=True)``: (N, C, H, W) -> (N, C, H, W).

A norm factory (a block class, or an object such as ``WeightNorm``) may declare, for the model builder,
the validator and the models:

- ``conv_bias``: do the convolutions before it need a bias;
- ``act_layer``: the activation a model applies on its own, e.g. after a residual sum;
- ``prepare_model(model)``: a change to the whole built model (initialization, weight reparametrization);
- ``batch_dependent``: it normalizes with statistics over the batch, so it cannot train on one sample;
- ``model_requires = (attribute, description)``: it only works in models that have that attribute;
- ``param_groups(model, lr)``: the optimizer's parameter groups, where its method trains some parameters
  at another learning rate (Fixup's scalars, SELU nets).
"""
from models.norm.basic import BatchNormAct, GroupNormAct, NoNormAct
from models.norm.fixup import Fixup, FixupAct, FixupNormAct
from models.norm.online import OnlineNormAct
from models.norm.power import PowerNormAct
from models.norm.reparam import SpectralNorm, WeightNorm
from models.norm.selu import SELU, SELUAct

__all__ = ["BatchNormAct", "EvoNormB0", "EvoNormS0", "Fixup", "FixupAct", "FixupNormAct", "GroupNormAct", "NoNormAct",
           "OnlineNormAct", "PowerNormAct", "SELU", "SELUAct", "SpectralNorm", "WeightNorm"]


def __getattr__(name: str):
    # EvoNorm comes from timm, whose import costs about 2 s: paid only by a run that chooses an EvoNorm.
    if name in ("EvoNormB0", "EvoNormS0"):
        from models.norm import evonorm

        return getattr(evonorm, name)
    raise AttributeError(f"module 'models.norm' has no attribute {name!r}")
