"""``python -m deeplense_tf.serving_client``: the command line of the REST client.

Only the entry point lives here, kept so that the documented command keeps its name;
the client is ``deeplense_tf.serving.client``. It runs as ``__main__``, exactly as
``python -m deeplense_tf.serving.client`` would, so that ``--help`` shows its usage
and flags.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("deeplense_tf.serving.client", run_name="__main__", alter_sys=True)
