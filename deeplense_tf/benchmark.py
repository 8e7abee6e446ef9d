r"""What the models cost: time and memory for training and inference, and how they grow.

  python -m deeplense_tf.benchmark --flagfile=configs/benchmark.cfg --output_dir=DIR [--profile]
  tensorboard --logdir DIR

For every model and image size: parameters, FLOPs per image, training step time and
images/s, inference latency at batch 1 and images/s at larger batches, peak host RSS
and (on GPUs) peak accelerator memory, compile time; with XLA off and on and with one
and two replicas (`MirroredStrategy`, over two logical CPU devices on a CPU-only host).
Scaling sweeps (batch size, image size, ViT tokens) are fitted and stated. The data
chain (simulation, TFDS build, read-back, the training input pipeline) runs first at
small sizes, so one command covers it all. Every configuration runs in its own process.

Writes into DIR: benchmark.json (everything, rewritten after each configuration),
benchmark.md (the tables), TensorBoard runs (scalars and a text report; tags listed in
`deeplense_tf.benchmarks.report`), `cells/` (each configuration's spec, raw
measurements and log) and, with --profile, a TensorBoard profiler trace of a few
training steps in run `profile` (writing it needs nothing extra; the Profile tab that
shows it needs the optional `tensorboard-plugin-profile` package).

Rows that cannot run say why (e.g. XLA with two CPU replicas); `--time_budget_s` bounds
the whole run, reporting what it had no time for as skipped.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from deeplense_tf.benchmarks import suite

_D = suite.BenchmarkConfig()


def define_flags(flag_values=flags.FLAGS):
    """Defines the command's flags, when it runs (or into a test's own FlagValues): some
    names (`--data_dir`) would clash with other programs' flags in one process."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("output_dir", None, "Write results here (also the TensorBoard "
                        "logdir).", required=True, **fv)
    flags.DEFINE_list("models", _D.models, "Models, default variants, or model:variant "
                      "('' for none).", **fv)
    flags.DEFINE_list("image_sizes", _D.image_sizes, "Image sizes in pixels (square, one "
                      "channel).", **fv)
    flags.DEFINE_integer("train_batch_size", _D.train_batch_size, "Global training batch "
                         "size.", **fv)
    flags.DEFINE_list("inference_batch_sizes", _D.inference_batch_sizes,
                      "Inference batch sizes ('' for none).", **fv)
    flags.DEFINE_list("xla", ["false", "true"], "XLA settings to measure (jit_compile).", **fv)
    flags.DEFINE_list("replicas", _D.replicas, "Replica counts (MirroredStrategy when > 1).",
                      **fv)
    flags.DEFINE_enum("mixed_precision", _D.mixed_precision,
                      ["auto", "float32", "mixed_bfloat16", "mixed_float16"],
                      "As training: auto = float16 on GPU, float32 on CPU.", **fv)
    flags.DEFINE_integer("warmup_steps", _D.warmup_steps, "Untimed calls after the first.",
                         **fv)
    flags.DEFINE_integer("steps", _D.steps, "Calls per timed repeat.", **fv)
    flags.DEFINE_integer("repeats", _D.repeats, "Timed repeats; the median is reported.", **fv)
    flags.DEFINE_integer("latency_repeats", _D.latency_repeats, "Single calls timed at "
                         "batch 1.", **fv)
    flags.DEFINE_float("max_seconds_per_measurement", _D.max_seconds_per_measurement,
                       "Stop adding repeats to a measurement after this many timed seconds.",
                       **fv)
    flags.DEFINE_float("max_seconds_per_call", _D.max_seconds_per_call, "Skip an inference "
                       "batch whose estimated call takes longer (0: never).", **fv)
    flags.DEFINE_float("cell_timeout_s", _D.cell_timeout_s, "Time limit of one "
                       "configuration (a sweep's process gets it for each point).", **fv)
    flags.DEFINE_float("time_budget_s", _D.time_budget_s, "Start no configuration after "
                       "this many seconds (0: no limit).", **fv)
    flags.DEFINE_list("scaling_models", _D.scaling_models, "Models of the scaling sweeps "
                      "('' for none).", **fv)
    flags.DEFINE_integer("scaling_image_size", _D.scaling_image_size, "Image size of the "
                         "batch and token sweeps.", **fv)
    flags.DEFINE_list("scaling_batch_sizes", _D.scaling_batch_sizes, "Batch sizes of the "
                      "batch sweep ('' for none).", **fv)
    flags.DEFINE_list("scaling_image_sizes", _D.scaling_image_sizes, "Image sizes of the "
                      "size sweep ('' for none).", **fv)
    flags.DEFINE_integer("scaling_batch_size", _D.scaling_batch_size, "Training batch of "
                         "the image-size and token sweeps.", **fv)
    flags.DEFINE_string("scaling_stem", _D.scaling_stem, "ResNet stem held fixed in the "
                        "size sweep (`auto` switches to stride 2 at 128 px, which hides the "
                        "pixel law).", **fv)
    flags.DEFINE_list("scaling_patch_sizes", _D.scaling_patch_sizes, "ViT patch sizes of "
                      "the token sweep ('' for none).", **fv)
    flags.DEFINE_bool("simulation", _D.simulation, "Simulation and read-back throughput.",
                      **fv)
    flags.DEFINE_bool("input_pipeline", _D.input_pipeline, "Training input pipeline "
                      "throughput.", **fv)
    flags.DEFINE_integer("pipeline_train_size", _D.pipeline_train_size, "Training images "
                         "simulated per image size for the data chain.", **fv)
    flags.DEFINE_string("data_dir", _D.data_dir, "Keep (and reuse) the data chain's small "
                        "data sets here (default: a temporary folder, removed after).", **fv)
    flags.DEFINE_bool("profile", _D.profile, "Capture a profiler trace of a few training "
                      "steps.", **fv)
    flags.DEFINE_integer("profile_steps", _D.profile_steps, "Training steps in the trace.",
                         **fv)
    flags.DEFINE_bool("quick", _D.quick, "Tiny `test` variants and one repeat (for tests).",
                      **fv)


_INT_LISTS = ("image_sizes", "inference_batch_sizes", "replicas", "scaling_batch_sizes",
              "scaling_image_sizes", "scaling_patch_sizes")


def config_from_flags(values) -> suite.BenchmarkConfig:
    kwargs = {}
    for field in dataclasses.fields(suite.BenchmarkConfig):
        value = getattr(values, field.name)
        if field.name in _INT_LISTS:
            value = [int(v) for v in value]
        elif field.name == "xla":
            accepted = {"false": False, "true": True}
            unknown = [v for v in value if v.lower() not in accepted]
            if unknown:
                raise app.UsageError(f"--xla: {unknown} not in {sorted(accepted)}")
            value = [accepted[v.lower()] for v in value]
        elif field.name in ("models", "scaling_models"):
            value = [v for v in value if v]
        kwargs[field.name] = value
    return suite.BenchmarkConfig(**kwargs)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        config = config_from_flags(flags.FLAGS).validate()
    except ValueError as exc:
        raise app.UsageError(str(exc)) from exc
    results = suite.run(config, flags.FLAGS.output_dir)
    from deeplense_tf.benchmarks import report

    print(report.markdown(results))


if __name__ == "__main__":
    define_flags()
    app.run(main)
