r"""The information floor of a split: exact-likelihood posteriors of its images.

  python -m deeplense_tf.reference --data_dir=DATA \
      --dataset=deeplense_lensing/model_ii_axion --split=test --num_images=1000 \
      --output_dir=reference/model_ii_axion_test [--num_workers=2] [--convergence_images=50]

  python -m deeplense_tf.reference --recipe=model_ii_axion --num_images=600 \
      --prior=-23.2,-22 --seed=11 --output_dir=reference/calibration_plateau

The second form is the posterior's simulation-based calibration check: fresh images of
the recipe (optionally with the target's prior restricted to a part of its range, for
the posterior and the simulation alike), whose truths are known, so the intervals'
coverage and the PIT must be nominal up to binomial noise. It needs no data set.

Runs in chunks on all cores and resumes where it stopped when run again with the same
flags (finished chunks are kept; a corrupt one is named, never silently dropped).
Writes OUTPUT_DIR/reference.json (the floor and the posterior's calibration), posteriors.npz
(every image's 1-D posterior and summaries), report.md with a figure. With
--convergence_images=N the first N images are computed again with every quadrature step
halved (`Settings.doubled()`) into OUTPUT_DIR/doubled, and reference.json gains how far
the two agree. `python -m deeplense_tf.evaluate ... --reference=OUTPUT_DIR` then sets a
model beside the floor, bin by bin.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags, logging

from deeplense_tf import console
from deeplense_tf.reference import runner
from deeplense_tf.reference.vortex import Settings, nuisance_check

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("data_dir", None, "TFDS data directory (not with --recipe).")
    flags.DEFINE_string("dataset", "deeplense_lensing/model_ii_axion",
                        "'deeplense_lensing/CONFIG[:VERSION]' of a vortex recipe with fixed "
                        "macro model and source (model_ii_axion, model_iii_axion).")
    flags.DEFINE_string("split", "test", "Split whose images get posteriors.")
    flags.DEFINE_integer("num_images", 1000, "The first N images in the split's file order "
                         "(the order `evaluate` reads); 0 or more than the split: all.")
    flags.DEFINE_string("output_dir", None, "Where chunks and results go.", required=True)
    flags.DEFINE_integer("num_workers", None, "Worker processes (default: all cores).")
    flags.DEFINE_integer("chunk_size", 25, "Images per chunk file (the unit of resuming).")
    flags.DEFINE_string("recipe", None, "Instead of a data set's split: simulate --num_images "
                        "fresh images of this recipe (model_ii_axion, model_iii_axion).")
    flags.DEFINE_string("prior", None, "With --recipe: 'LOW,HIGH', the target's uniform prior "
                        "restricted to this part of the recipe's, for images and posterior.")
    flags.DEFINE_integer("seed", 1, "With --recipe: the data-set seed whose test stream is "
                         "drawn (0 repeats the built data set's test images).")
    flags.DEFINE_integer("convergence_images", 0, "Also run the first N images with every "
                         "quadrature step halved, and compare.")


def read_split(data_dir: str, dataset: str, split: str, num_images: int):
    """(images, truths, recipe name, nuisances) of the first `num_images` of the split,
    file order; nuisances ({name: (N,)}, the true vortex angle and source centre) is None
    when the data set does not store them."""
    import tensorflow_datasets as tfds

    from deeplense_tf import input_pipeline

    builder = input_pipeline.load_builder(data_dir, dataset)
    if split not in builder.info.splits:
        raise runner.ReferenceError(f"--split={split}: not in {builder.info.full_name}; "
                                    f"available: {list(builder.info.splits)}")
    if runner.TARGET not in builder.info.features:
        raise runner.ReferenceError(f"--dataset={dataset}: has no {runner.TARGET} target")
    total = builder.info.splits[split].num_examples
    count = total if num_images <= 0 else min(num_images, total)
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            read_config=tfds.ReadConfig(try_autocache=False))
    params = builder.info.features["params"] if "params" in builder.info.features else {}
    stored = [k for k in runner.NUISANCES if k in params]
    images, truths, nuisances = [], [], {k: [] for k in stored}
    for example in tfds.as_numpy(ds.take(count)):
        images.append(example["image"][..., 0])
        truths.append(example[runner.TARGET])
        for k in stored:
            nuisances[k].append(example["params"][k])
    nuisances = ({k: np.asarray(v, np.float64) for k, v in nuisances.items()}
                 if len(stored) == len(runner.NUISANCES) else None)
    return (np.stack(images), np.asarray(truths, np.float32),
            runner.recipe_of_config(builder.info.config_name), nuisances)


def convergence(base: dict, fine: dict) -> dict:
    """How far the doubled quadrature moves the summaries, over the images both ran."""
    n = len(fine["index"])
    out = {"images": int(n)}
    for key in ("median", "mean", "q16", "q84", "q025", "q975"):
        out[f"max_abs_change_{key}"] = float(np.max(np.abs(fine[key] - base[key][:n])))
        out[f"median_abs_change_{key}"] = float(np.median(np.abs(fine[key] - base[key][:n])))
    out["max_abs_change_pit"] = float(np.max(np.abs(fine["pit"] - base["pit"][:n])))
    out["floor_mae"] = float(np.mean(np.abs(base["median"][:n] - base["truth"][:n])))
    out["floor_mae_doubled"] = float(np.mean(np.abs(fine["median"] - fine["truth"])))
    out["cpu_seconds_per_image_doubled"] = float(np.median(fine["cpu_seconds"]))
    return out


def simulated(num_workers):
    """(recipe, images, truths, nuisances, dataset label, split label) for --recipe."""
    from deeplense_tf.simulation import recipes

    if FLAGS.num_images < 1:
        raise app.UsageError(f"--num_images={FLAGS.num_images}: with --recipe, the number of "
                             "images to simulate (at least 1)")
    try:
        recipe = recipes.get(FLAGS.recipe)
    except (KeyError, ValueError) as e:
        raise app.UsageError(f"--recipe={FLAGS.recipe}: {e}") from None
    nuisance_check(recipe)  # a recipe the estimator cannot marginalize: refused before simulating
    label = f"simulated:{recipe.name}"
    if FLAGS.prior:
        try:
            low, high = (float(v) for v in FLAGS.prior.split(","))
        except ValueError:
            raise app.UsageError(f"--prior={FLAGS.prior}: expected 'LOW,HIGH', two numbers") from None
        recipe = runner.restrict_prior(recipe, low, high)
        label += f" {runner.TARGET}~U({low:g},{high:g})"
    images, truths, nuisances = runner.simulate_images(recipe, FLAGS.num_images, FLAGS.seed,
                                                       num_workers)
    return recipe, images, truths, nuisances, label, f"test stream of seed {FLAGS.seed}"


def main(argv):
    del argv
    from deeplense_tf.simulation import parallel, recipes

    console.setup(log_file=os.path.join(FLAGS.output_dir, "reference.log"))

    num_workers = FLAGS.num_workers or parallel.default_num_workers()
    if FLAGS.recipe:
        recipe, images, truths, nuisances, dataset, split = simulated(num_workers)
    else:
        if not FLAGS.data_dir:
            raise app.UsageError("--data_dir is required (or --recipe, to simulate images)")
        if FLAGS.prior or FLAGS["seed"].present:
            raise app.UsageError("--prior and --seed go with --recipe (a data set's images and "
                                 "prior are its own)")
        images, truths, recipe_name, nuisances = read_split(FLAGS.data_dir, FLAGS.dataset,
                                                            FLAGS.split, FLAGS.num_images)
        recipe, dataset, split = recipes.get(recipe_name), FLAGS.dataset, FLAGS.split
    summary = runner.run(recipe, images, truths, FLAGS.output_dir, dataset=dataset,
                         split=split, chunk_size=FLAGS.chunk_size,
                         num_workers=num_workers, log=logging.info, nuisances=nuisances)
    if FLAGS.convergence_images > 0:
        n = min(FLAGS.convergence_images, len(images))
        fine_dir = os.path.join(FLAGS.output_dir, "doubled")
        runner.run(recipe, images[:n], truths[:n], fine_dir, dataset=dataset,
                   split=split, settings=Settings().doubled(),
                   chunk_size=FLAGS.chunk_size, num_workers=num_workers, log=logging.info)
        _, base = runner.load(FLAGS.output_dir)
        _, fine = runner.load(fine_dir)
        summary["convergence"] = convergence(base, fine)
        runner._write_json(os.path.join(FLAGS.output_dir, "reference.json"), summary)
    print(f"floor (MAE of the posterior median) on {summary['count']} images: "
          f"{summary['floor_mae']:.4f} ± {summary['floor_mae_standard_error']:.4f}; RMSE of the "
          f"mean {summary['rmse_of_mean']:.4f}; 68%/95% coverage {summary['coverage_68']:.3f}/"
          f"{summary['coverage_95']:.3f} (PIT uniform: KS p = {summary['pit_ks_pvalue']:.3g}); "
          f"{summary['cpu_seconds_per_image']['median']:.1f} s "
          "CPU per image (median)")
    if "mode_missed" in summary:
        print(f"mode check: the true (m, angle) slice beats the quadrature's best by more than "
              f"{runner.MODE_GAP_NATS:g} nats in {summary['mode_missed']:.1%} of the images; "
              f"floor at least {summary['floor_mae_lower_bound']:.4f}"
              + (f"; 68%/95% coverage where the mode was found "
                 f"{summary['coverage_68_mode_found']:.3f}/{summary['coverage_95_mode_found']:.3f}"
                 if summary["coverage_68_mode_found"] is not None else ""))
    if "convergence" in summary:
        print("convergence (doubled quadrature): " + json.dumps(summary["convergence"]))
    print(f"Report: {os.path.join(FLAGS.output_dir, 'report.md')}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
