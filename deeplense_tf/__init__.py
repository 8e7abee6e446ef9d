"""deeplense_tf: dark-matter properties from strong-lensing images by deep regression.

Importing the package registers the ``deeplense_lensing`` TFDS builder, so that
``tfds.load('deeplense_lensing/<config>', data_dir=...)`` works afterwards. The import
is light: TensorFlow itself is loaded only when a data set is built or read.
"""

__version__ = "0.1.0"

from deeplense_tf.datasets.deeplense_lensing import deeplense_lensing_dataset_builder as _builder  # noqa: E402,F401
