"""The downstream protocols on a pretraining workdir: linear, kNN, semi-supervised, transfer, finetune.

Each protocol is a trainer (``cmd_jax.trainers.TRAINERS``, chosen by ``config.trainer``) with
``train_and_evaluate(config, workdir)``; they follow docs/references.md#cmd-downstream-protocols
(the CMD reference's ``action_classification_cmd.py``, ``action_retrieval_cmd.py``,
``action_classification_cmd_semi.py`` and the transfer script) and
#hiclr-downstream-protocols (HiCLR's linear, fine-tuning and semi-supervised processors):

- ``linear`` (``linear.py``): a new classifier on the frozen encoders (#cmd-linear-evaluation);
- ``knn`` (``knn.py``): 1-NN cosine retrieval with the frozen encoders (#cmd-knn-retrieval);
- ``semi``, ``transfer``, ``finetune`` (``finetune.py``): the encoders and a new classifier
  fine-tuned on a labelled subset (#cmd-semi-supervised), another dataset (#cmd-transfer) or
  every label, one run per seed.

Every protocol runs the streams of ``config.streams`` (``joint``, ``motion``, ``bone``, any
subset the pretraining has; the CMD reference evaluates ``joint`` only, #cmd-quirks item 5)
in one jitted step from the same batches and crops, each with its own encoder and head;
their parameters are disjoint, so this equals training them one by one. With 2+ streams a
fusion entry is added (``three_stream`` for joint + motion + bone, ``fusion`` otherwise):
the mean of the streams' softmax probabilities (kNN: of their cosine similarities), which
is not in the references' scripts.

Honest reporting (#cmd-quirks item 6): the references evaluate on the *test* set during
training and report the best of those evaluations (model selection on the test set). Here
every trained protocol reports ``final_top1``, the accuracy after the last epoch, and,
labelled as such, ``best_of_evals_top1``, the reference's number. Accuracies are fractions
in [0, 1].

Files written in the workdir (process 0): ``results.json``; ``metrics.jsonl`` and
TensorBoard events (per-epoch train loss/accuracy/lr, every evaluation; of the last run
only); ``predictions_<stream|fusion>.npz``; ``features_<stream>.npz`` (the test split's
features of the final encoder); ``model.msgpack`` (``{stream: {"params", "batch_stats"}}``
of ``Encoder(num_outputs=C, mlp=False)``) and, for linear, ``heads.msgpack``; PNG plots.
A workdir whose ``results.json`` comes from the same config and pretraining checkpoints is
not recomputed.

Deviations from the references (also in ``results.json``): crops and subsets come from
seeded JAX/numpy generators; the per-epoch shuffle is grain's; multi-stream fusion is ours;
the final-epoch number is reported beside the best-of-evaluations number.

Module layout (a module imports only modules listed above it):

- ``heads.py``: the new classifier (initialisations, logits), softmax, top-1, the fusions of
  logits (softmax mean; HiCLR's weighted-logit ensemble), one evaluation's record;
- ``subsets.py``: labelled subsets (``global``, ``stratified``, ``class_balanced``) and the
  source reading them (``SubsetSource``, the epoch length);
- ``batches.py``: epoch batches (the reference's shuffled loader), steps per epoch, the
  streams' features of a whole split;
- ``views.py``: the training and test views of the stored clips;
- ``outputs.py``: ``results.json`` records, the npz and msgpack files, the printed table;
- ``training.py``: the trained protocols' state, cross-entropy and epoch loop;
- ``common.py``: config validation, setup (pretrained encoders, splits, class count), the
  run-once rule (a finished workdir is not recomputed) and the plots;
- ``linear.py``, ``knn.py``, ``finetune.py``: the protocols, each with ``run`` and
  ``train_and_evaluate``.
"""
