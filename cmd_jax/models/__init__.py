"""Encoders by name: ``config.model.name`` picks one, any method can use any of them.

==========  ==============================  ==============================================
name        module                          what
==========  ==============================  ==============================================
``gru``     ``cmd_jax.models.gru``          CMD's per-stream "BiGRU" (input BN, GRU, last step)
``stgcn``   ``cmd_jax.models.stgcn``        ST-GCN as HiCLR/AimCLR configure it (graph from the layout)
``dsta``    ``cmd_jax.models.dsta``         DSTA-Net, HiCLR's transformer configuration
==========  ==============================  ==============================================

Every encoder is a Flax module called as ``model.apply(variables, x, train=..., features_only=...)``:

- ``x``: one stream's clip ``[N, C=3, T, V, M]`` float32 (after augmentation and the
  joint/motion/bone conversion); each encoder flattens or folds it as its reference does;
- ``train``: batch statistics in BatchNorm (running statistics updated, which needs
  ``mutable=["batch_stats"]``) and dropout on (which needs ``rngs={"dropout": key}`` for an
  encoder with a non-zero dropout rate); ``False``: running statistics, no dropout;
- returns the pooled feature ``[N, feature_dim]`` when ``features_only`` or when built with
  ``num_outputs=None``, else the head's output ``[N, num_outputs]`` (``fc``, or the MLP
  ``fc_0 -> ReLU -> fc_2``, ``cmd_jax.models.common.head``).
- ``map_transform`` (optional): a function of the encoder's last feature map (the map it
  pools to its feature, channels last: ``[N*M, T', V, D]`` for ST-GCN and DSTA-Net,
  ``[N, T, 1, 2H]`` for the GRU) returning an array of that shape; the call then returns the
  pair ``(output, output of the transformed map)``, pooled alike and through the same head
  (AimCLR's EADM; docs/architecture.md#the-encoder-interface).

Every parameter is stored in PyTorch's layout under PyTorch's module names (``fc_0`` for
``fc.0``), so reference checkpoints convert by renaming (``cmd_jax.interop``).

Each encoder module provides ``default_config()`` (its fields of ``config.model``),
``validate(model_config, layout)`` (one-line errors before compiling),
``feature_dim(model_config)`` and ``from_config(model_config, layout, *, num_outputs, mlp,
training, fc_init)``. ``config.model`` holds the shared fields (``name``, ``embed_dim``, ``mlp``,
``init``), the GRU's fields at the top level (CMD's configs had them there before the other
encoders existed) and the others' under ``config.model.stgcn`` and ``config.model.dsta``.
Adding an encoder = a module with those four functions + an entry in ``ENCODERS``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import flax.linen as nn
import jax
import ml_collections

from cmd_jax.layouts import SkeletonLayout
from cmd_jax.models.common import INITS, TorchBatchNorm, TorchConv2d, TorchLinear, strip_head
from cmd_jax.models.common import torch_key as common_torch_key

ENCODERS = {
    "gru": "cmd_jax.models.gru",
    "stgcn": "cmd_jax.models.stgcn",
    "dsta": "cmd_jax.models.dsta",
}


def model_name(model_config) -> str:
  """``config.model.name`` (``gru`` when a config has no ``name``: CMD's configs and workdirs, whose encoder is the GRU)."""
  return str(model_config.get("name", "gru"))


def encoder_module(name: str) -> ModuleType:
  if name not in ENCODERS:
    raise ValueError(f"config.model.name={name!r}; expected one of {', '.join(ENCODERS)}")
  return importlib.import_module(ENCODERS[name])


def default_config() -> ml_collections.ConfigDict:
  """The ``config.model`` every config starts from: the shared fields, every encoder's own."""
  c = ml_collections.ConfigDict()
  c.name = "gru"
  c.embed_dim = 128      # the pretraining head's output (the contrastive feature)
  c.mlp = True           # the pretraining head is the MLP fc_0 -> ReLU -> fc_2
  c.init = "default"     # "default" (each architecture's own) or "normal_0.02" (HiCLR's weights_init)
  for name in ENCODERS:
    module = encoder_module(name)
    fields = module.default_config()
    if name == "gru":
      c.update(fields)
    else:
      c[name] = fields
  return c


def validate(model_config, layout: SkeletonLayout) -> None:
  """Every check of ``config.model`` that needs no data (ValueError naming the field)."""
  name = model_name(model_config)
  module = encoder_module(name)
  if str(model_config.get("init", "default")) not in INITS:
    raise ValueError(f"config.model.init={model_config.init!r}; expected one of {', '.join(INITS)}")
  if int(model_config.get("embed_dim", 128)) <= 0:
    raise ValueError(f"config.model.embed_dim={model_config.embed_dim} must be positive")
  module.validate(model_config, layout)


# The field of ``config.model`` that holds each encoder's training-time dropout rate.
DROPOUT_FIELDS = {"gru": None, "stgcn": ("stgcn", "dropout"), "dsta": ("dsta", "attention_dropout")}


def with_dropout(model_config, rate: float):
  """A copy of ``config.model`` with the encoder's dropout rate set to ``rate`` (the
  protocols fine-tune with their own rate: HiCLR's transformer fine-tunes without attention
  dropout). The GRU has no dropout: a rate above 0 is a ValueError."""
  name = model_name(model_config)
  field = DROPOUT_FIELDS[name]
  out = ml_collections.ConfigDict(model_config.to_dict())
  if field is None:
    if float(rate) > 0:
      raise ValueError(f"config.encoder_dropout={rate}: the {name} encoder has no dropout; expected -1 or 0")
    return out
  out[field[0]][field[1]] = float(rate)
  return out


def feature_dim(model_config) -> int:
  """The size of the pooled feature the downstream protocols use."""
  return int(encoder_module(model_name(model_config)).feature_dim(model_config))


FC_INITS = ("default", "normal_0.01")


def build_encoder(model_config, layout: SkeletonLayout, *, num_outputs: int | None, mlp: bool = False,
                  training: bool = False, fc_init: str = "default") -> nn.Module:
  """The encoder ``config.model`` names, with a head of ``num_outputs`` (None: no head).

  ``training=True`` adds the encoder's speed options (e.g. the GRU's ``compute_dtype``);
  evaluation and feature extraction use ``training=False`` (float32, the same function).
  ``fc_init`` initialises the head's last layer: ``"default"`` (the architecture's own) or
  ``"normal_0.01"`` (``N(0, 0.01^2)`` weight, bias 0: the CMD protocols' new classifier);
  ``config.model.init = "normal_0.02"`` overrides both.
  """
  if fc_init not in FC_INITS:
    raise ValueError(f"build_encoder: fc_init={fc_init!r}; expected one of {FC_INITS}")
  module = encoder_module(model_name(model_config))
  return module.from_config(model_config, layout, num_outputs=num_outputs, mlp=mlp, training=training,
                            fc_init=fc_init)


# XLA:CPU at its default optimisation level spends 15-20 s compiling the random draws of an
# ST-GCN's or DSTA-Net's initialisation (measured on a 2-core CPU), more than the training
# step itself; level 0 compiles them in ~5 s. Initialisation runs once, so its speed does not
# matter, and the values agree with op-by-op initialisation to float32 rounding.
_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def init_variables(model: nn.Module, key, x, **kwargs):
  """``model.init(key, x, train=False, **kwargs)`` compiled once, cheaply (see above); under a
  trace (``jax.eval_shape``, ``jit``) it is the plain call."""
  if isinstance(key, jax.core.Tracer) or isinstance(x, jax.core.Tracer):
    return model.init(key, x, train=False, **kwargs)
  fn = jax.jit(lambda k, inputs: model.init(k, inputs, train=False, **kwargs))
  return fn.lower(key, x).compile(compiler_options=_INIT_COMPILER_OPTIONS)(key, x)


def torch_key(model_config, path) -> str:
  """The PyTorch ``state_dict`` key suffix of an encoder variable at ``path`` (module names
  and leaf, as in the Flax tree): the encoder module's own ``torch_key`` if it has one
  (the GRU), else ``cmd_jax.models.common.torch_key``."""
  module = encoder_module(model_name(model_config))
  return getattr(module, "torch_key", common_torch_key)(tuple(path))


def torch_buffers(model_config, layout: SkeletonLayout) -> dict:
  """The encoder's PyTorch buffers that are not Flax variables (ST-GCN's graph ``A``, DSTA's
  ``atts``/``pes.pe``), ``{key suffix: float32 array}``; the GRU has none."""
  module = encoder_module(model_name(model_config))
  if not hasattr(module, "torch_buffers"):
    return {}
  return dict(module.torch_buffers(model_config, layout))


__all__ = ["ENCODERS", "TorchBatchNorm", "TorchConv2d", "TorchLinear", "build_encoder", "default_config",
           "encoder_module", "feature_dim", "init_variables", "with_dropout", "model_name", "strip_head", "torch_buffers", "torch_key", "validate"]
