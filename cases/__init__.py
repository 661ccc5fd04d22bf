"""The clinical app (Django): clinics, patients, cases, lesions, images, predictions and reviews;
access rules, upload validation, the services behind the views, the review queue, the
prediction state machine (cases.scoring) and its Celery tasks (cases.tasks), re-scoring and
monitoring.

May import: ``classifier``, ``audit``, ``mlcore``, ``training`` (the labels it learns from),
Django, Celery. Must not import: ``melanoma_site`` (which wires everything together).
"""
