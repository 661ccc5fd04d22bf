"""SecondLook training package (plain Python + TensorFlow/Keras; no Django).

TensorFlow is imported lazily inside the modules that need it (model, train, ...);
`training.labels`, `training.scoring`, `training.imageio` are light-weight and
are imported by the inference core in `classifier/`.
"""
