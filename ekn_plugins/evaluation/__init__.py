"""Evaluation of trained models on labelled volumes (ELEKTRONN2's ``trainutils.evaluate`` family and
its watershed segmentation search).

* :mod:`~ekn_plugins.evaluation.binary`: threshold sweeps of a boundary/foreground probability
  against binary labels, summed block by block (PR and ROC curves, F1, accuracy), and their figures;
* :mod:`~ekn_plugins.evaluation.segmentation`: segmentations from boundary probabilities or
  affinities, scored against ground-truth neuron ids (variation of information, adapted Rand error),
  and the search for the segmentation parameters that score best;
* :mod:`~ekn_plugins.evaluation.model_evaluation`: ``ekn evaluate``, a model or an existing
  prediction on labelled volumes (cached predictions, curves, segmentation search), with
  :mod:`~ekn_plugins.evaluation.inputs` (checks and defaults of its inputs),
  :mod:`~ekn_plugins.evaluation.options` (the settings of one evaluation),
  :mod:`~ekn_plugins.evaluation.volume_evaluation` (one volume: prediction, sweep, figures,
  segmentation search), :mod:`~ekn_plugins.evaluation.box_layout` (the evaluated box and the
  offsets of labels, ids and prediction), :mod:`~ekn_plugins.evaluation.ground_truth` (labels and
  ids of a box), :mod:`~ekn_plugins.evaluation.prediction_reading` (a prediction read block by
  block), :mod:`~ekn_plugins.evaluation.runs` (the model and volumes of a run directory),
  :mod:`~ekn_plugins.evaluation.affinities` (affinity nets: nhood, channels, true affinity graph)
  and :mod:`~ekn_plugins.evaluation.report` (``REPORT.md``).
"""
