"""The training pipeline of SecondLook: data audit, lesion-level splits, the CNN and its
augmentation, training, calibration, evaluation with lesion-level bootstrap CIs, ensembles, the
assessment fitting (quality thresholds, out-of-domain detector, conformal sets) and the export of
model artifacts. Run as ``python -m training``.

May import: ``mlcore`` and the scientific stack (TensorFlow lazily, inside functions).
Must not import: Django, Celery, ``classifier``, ``cases``, ``audit``, ``melanoma_site``.
"""
