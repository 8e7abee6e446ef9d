"""``python -m deeplense_tf.serve``: the command that starts the local TF Serving endpoint.

Only the entry point lives here, kept so that the documented command keeps its name;
the server is ``deeplense_tf.serving.server``. It runs as ``__main__``, exactly as
``python -m deeplense_tf.serving.server`` would, so that ``--help`` shows its usage
and flags.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("deeplense_tf.serving.server", run_name="__main__", alter_sys=True)
