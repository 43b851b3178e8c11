"""What the SkeletonCLR family shares: SkeletonCLR, CrosSCLR, AimCLR and HiCLR.

The four methods descend from one PyTorch code base (CrosSCLR's release, forked by AimCLR,
itself forked by HiCLR; docs/references.md#hiclr), and the parts they have in common live
here once, below the method packages:

- ``views``: the feeders' augmentations (temporal crop with mirrored padding, shear, and the
  strong set: flip, rotation, noise, blur, axis mask, time reversal) and their composition
  into normal and strong views;
- ``moco``: MoCo v2 with one query and one momentum key encoder: the encoder pair,
  the momentum update, an encoder's normalised embedding, a branch's logits against the key
  and the queue;
- ``mining``: nearest-neighbour mining (NNM), the multi-positive InfoNCE of AimCLR and HiCLR;
- ``ddm``: the similarity-distribution consistency term (AimCLR's D3M, HiCLR's hierarchical terms);
- ``single_stream``: a one-stream run (SkeletonCLR, AimCLR, HiCLR): the train state of
  SkeletonCLR and AimCLR, the shared config checks, the encoder with its head, the state's creation.

CMD (``cmd_jax.methods.cmd``) comes from another code base and shares only what every
MoCo-style method does (``cmd_jax.losses``, ``cmd_jax.queue``).
"""
