"""The experiment flagfiles, installed with the package as `deeplense_tf.configs`.

`importlib.resources.files("deeplense_tf.configs") / "NAME.cfg"` finds one in any install;
in a checkout they are simply `configs/NAME.cfg`.
"""
