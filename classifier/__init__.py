"""SecondLook inference core (no Django here; TensorFlow is imported lazily inside functions).

Django app config lives in classifier/apps.py; Celery tasks in classifier/tasks.py.
"""
