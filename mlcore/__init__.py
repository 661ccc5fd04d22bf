"""The ML core of SecondLook: everything needed to run a trained model, and nothing else.

Labels and class groups, image decoding and preprocessing, the model artifact on disk (its card,
hashes), loading and caching models, the fast inference runners (LiteRT / tf.function), scoring
thresholds, the image-quality checks, the out-of-domain detector, conformal prediction sets and
Grad-CAM explanations.

May import: NumPy, Pillow, OpenCV, scikit-learn, TensorFlow/Keras (lazily, inside functions).
Must not import: Django, Celery, ``training``, ``classifier``, ``cases``, ``audit`` or
``melanoma_site`` (enforced by the import-linter contracts in ``.importlinter``). Its settings
arrive through `mlcore.options.configure`.
"""
