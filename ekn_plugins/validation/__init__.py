"""Validation on whole volumes during training (the ``volume_validation`` setting).

* :mod:`~ekn_plugins.validation.spec`: the setting's schema, checked with one message per mistake;
* :mod:`~ekn_plugins.validation.metrics`: pixel error, per-class F1 / IoU / precision / recall and
  MSE, summed block by block;
* :mod:`~ekn_plugins.validation.evaluate`: dense prediction of the labelled volumes block by block
  with the out-of-core engine, compared with the labels;
* :mod:`~ekn_plugins.validation.segmentation_metrics`: the boundary channel of a volume's evaluated
  box, segmented by watershed and scored against ground-truth object ids (VI, adapted Rand error).

The trainer runs it through the hook plugin :mod:`ekn_plugins.trainer_hooks.volume_validation`.
Nothing here imports TensorFlow.
"""
