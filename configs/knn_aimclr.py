"""AimCLR's kNN evaluation of a pretraining workdir (the authors: SimSiam's ``knn_monitor``).

  python launch.py --config configs/knn_aimclr.py:<name> --config.init_from=<pretraining workdir(s)> --workdir <dir>

``configs/knn.py`` with the weighted kNN the AimCLR authors say they used (the release's issue
#5, PatrickHua/SimSiam tools/knn_monitor.py): cosine similarity of L2-normalised features,
the k = 200 most similar training clips, each voting ``exp(similarity / 0.1)`` for its class.
Which feature the authors used (the pooled encoder output or the MLP head's) is unknown; this
uses the encoder's, as every protocol here. The paper's kNN numbers could not be retrieved.
With fewer than 200 training clips (MSR Action3D's split has 291) k is still 200.
"""

from __future__ import annotations

import ml_collections

from configs import knn, linear


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  linear.check_name(arg or "synthetic", linear.DATASETS, "configs/knn_aimclr.py")
  c = knn.get_config(arg)
  with c.unlocked():
    c.name = f"knn_aimclr_{arg or 'synthetic'}"
    c.knn_k = 200                    # SimSiam's knn_monitor: knn_k=200
    c.knn_temperature = 0.1          # knn_t=0.1
    c.reference_top1 = 0.0
    c.reference_note = "AimCLR's kNN numbers could not be retrieved"
  c.lock()
  return c
