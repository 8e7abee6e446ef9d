r"""Training throughput: images/s of the training step with XLA on and off, beside the
input pipeline's images/s alone, and peak memory, for each model at 64 and 150 px.

  python -m deeplense_tf.benchmarks.training --output_dir=DIR [--models=resnet18,vit]
      [--image_sizes=64,150] [--batch_size=32] [--quick]

Prints a markdown table and writes DIR/training_benchmark.json. It is the training part
of `python -m deeplense_tf.benchmark` (which adds inference, replicas, scaling and
TensorBoard output) and shares its code: every (model, size, XLA) configuration runs
in a fresh process, so that its peak memory is its own.

The step measured is `train_step.train_benchmark`, built as `deeplense_tf.training`'s
step is (see `train_step`); the input pipeline is measured separately over real
TFRecords (`data_chain.input_pipeline_benchmark`) and must deliver at least 5x the
images/s that the model trains at.
"""

from __future__ import annotations

import json
import os

from deeplense_tf.benchmarks import measure


def training_table(results: dict) -> str:
    """Model | px | images/s XLA off / on | compile | pipeline | ratio | peak RSS."""
    from deeplense_tf.benchmarks import report

    return report.training_summary_table(results)


def run(output_dir: str, *, models=("resnet18", "resnet34", "vit", "hybrid"),
        image_sizes=(64, 150), batch_size: int = 32, quick: bool = False, **overrides) -> dict:
    """Training images/s with XLA on and off, the input pipeline alone, peak memory."""
    from deeplense_tf.benchmarks import suite

    config = suite.BenchmarkConfig(
        models=list(models), image_sizes=list(image_sizes), train_batch_size=batch_size,
        inference_batch_sizes=[], xla=[False, True], replicas=[1], scaling_models=[],
        simulation=False, quick=quick, **overrides)
    results = suite.run(config, output_dir, write_outputs=False)
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "training_benchmark.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    return results


def main(argv):
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    results = run(f.output_dir, models=f.models, image_sizes=[int(s) for s in f.image_sizes],
                  batch_size=f.batch_size, quick=f.quick, time_budget_s=f.time_budget_s)
    print(f"Machine: {measure.describe(results['machine'])}.\n")
    print(training_table(results))


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("output_dir", None, "Write training_benchmark.json here.", required=True)
    flags.DEFINE_list("models", ["resnet18", "resnet34", "vit", "hybrid"],
                      "Models (default variants), or model:variant.")
    flags.DEFINE_list("image_sizes", ["64", "150"], "Image sizes in pixels.")
    flags.DEFINE_integer("batch_size", 32, "Global training batch size.")
    flags.DEFINE_bool("quick", False, "Tiny `test` variants and one timed step (for tests).")
    flags.DEFINE_float("time_budget_s", 0.0, "Stop starting configurations after this many "
                       "seconds (0: no limit); those left are reported as skipped.")
    app.run(main)
