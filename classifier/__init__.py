"""The model registry (a Django app): model versions and their metrics, training runs started from
the admin (executed by Celery workers of the ``training`` queue), the promotion gate, activation
and roll-back. Knows nothing of patients: the clinical app hands it confirmed labels through
`classifier.retraining.set_reviewed_records_provider`.

May import: ``mlcore``, ``training``, ``audit``, Django, Celery.
Must not import: ``cases``, ``melanoma_site``.
``python -m classifier predict`` is a Django-free command line over ``mlcore``.
"""
