"""A local server that speaks TF Serving's REST and gRPC protocols, and its client.

One module per job, each importing only those above it in this list:

- ``client``: REST client; standard library and numpy only, usable as a lone file.
- ``protocol``: TF Serving's REST routes, request and response JSON, error statuses
  (numpy, no TensorFlow).
- ``protos``: the few TF Serving protobuf messages, declared here (warm-up records,
  ``models.config``, gRPC requests).
- ``repository``: versioned SavedModels on disk, loaded, warmed up and swapped.
- ``grpc_api``: gRPC ``PredictionService/Predict`` over the same repositories.
- ``server``: the HTTP server and its flags.

The commands are ``python -m deeplense_tf.serve`` (or ``-m deeplense_tf.serving``) and
``python -m deeplense_tf.serving_client``. Nothing is imported here, so that importing
the client never loads TensorFlow.
"""
