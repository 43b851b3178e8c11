"""PyTorch interop: reference checkpoints of the methods <-> this project's pretraining workdirs.

=========================  ==================================================================
module                     owns
=========================  ==================================================================
``common.py``              what every format shares: ``TorchImportError``, reading and writing
                           torch files, key comparison and its message, config loading, the
                           atomic workdir writing
``torchlight.py``          the torchlight family's conventions (HiCLR; SkeletonCLR, CrosSCLR,
                           AimCLR): encoder keys, both edge-importance namings, queues, what
                           the shapes tell
``cmd.py``, ``hiclr.py``   one module per method's checkpoint format
``formats.py``             the formats by method name, their interface, detection from keys
``convert.py``             ``import_checkpoint``, ``export_checkpoint``
``cli.py``                 the command line (``python -m cmd_jax.torch_import``)
=========================  ==================================================================

The commands, key mappings and what is identical: docs/pytorch_interop.md.
"""
