"""Package build script; metadata and dependencies live in setup.cfg.

The TFDS builder folder sits at the repository top level as ``datasets/`` (TFDS's
own layout, usable with ``tfds build datasets/deeplense_lensing``) but is installed
as ``deeplense_tf.datasets``: a top-level ``datasets`` import name would shadow the
HuggingFace ``datasets`` package in every environment that installs us. The
experiment flagfiles in ``configs/`` are installed as ``deeplense_tf.configs`` (the
quickstart trains with ``configs/quickstart.cfg``).
"""
import setuptools

setuptools.setup(
    packages=setuptools.find_packages(include=["deeplense_tf", "deeplense_tf.*"])
    + ["deeplense_tf.datasets", "deeplense_tf.datasets.deeplense_lensing", "deeplense_tf.configs"],
    package_dir={"deeplense_tf.datasets": "datasets", "deeplense_tf.configs": "configs"},
)
