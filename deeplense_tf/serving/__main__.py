"""``python -m deeplense_tf.serving``: the same server as ``python -m deeplense_tf.serve``."""

import runpy

# Run as __main__ (not imported), so that --help shows the server's docstring and flags.
runpy.run_module("deeplense_tf.serving.server", run_name="__main__", alter_sys=True)
