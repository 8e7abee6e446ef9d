"""deeplense_tf: dark-matter properties from strong-lensing images by deep regression.

Importing the package registers the ``deeplense_lensing`` TFDS builder, so that
``tfds.load('deeplense_lensing/<config>', data_dir=...)`` works afterwards, and the
package's Keras layers, so that ``keras.saving.load_model("run/model.keras")`` works (as
soon as Keras is imported, see ``keras_objects``). The import is light: TensorFlow itself
is loaded only when a data set is built or read, or a model used.

    import deeplense_tf
    model = deeplense_tf.load_model("resnet18_model_ii_axion")   # or a .keras path
"""

__version__ = "0.1.0"

from deeplense_tf import console as _console  # noqa: E402

_console.quiet_tensorflow_for_command_line()  # before anything imports TensorFlow

from deeplense_tf.datasets.deeplense_lensing import deeplense_lensing_dataset_builder as _builder  # noqa: E402,F401

from deeplense_tf import keras_objects as _keras_objects  # noqa: E402

_keras_objects.install()


def load_model(model: str, compile: bool = False):  # noqa: A002 - keras' own argument name
    """A Keras model from a shipped name, `pretrained:NAME` or a `.keras` path."""
    from deeplense_tf import pretrained

    return pretrained.load_model(model, compile=compile)
