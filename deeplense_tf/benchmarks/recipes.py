r"""CPU time per image of simulation recipes, side by side in one process.

    python -m deeplense_tf.benchmarks.recipes [--recipes=euclid_axion,euclid_axion_realistic,...]
        [--images=100] [--rounds=5] [--output=recipes.json]

Each recipe's simulator is built and warmed up once (imports, the stamp catalogue of the
real-source recipes, ~4 s once per process), then every round times `--images` calls of
`simulate` per recipe in turn; the best round is kept (the least disturbed by other
jobs on a shared machine). Each recipe is compared with its parametric twin: the recipe
its name starts with (`euclid_axion_psf` -> `euclid_axion`). One thread per BLAS pool,
as in the data set builder's workers.
"""

from __future__ import annotations

import json
import time

from absl import app, flags

DEFAULT = ("euclid_axion,euclid_axion_realistic,euclid_axion_lens_light,euclid_axion_psf,"
           "euclid_axion_correlated_noise,euclid_axion_real_sources,hst_axion,hst_axion_realistic")


def twin_of(name: str, names) -> str:
    """The longest other recipe name that `name` starts with (itself if none)."""
    candidates = [other for other in names if other != name and name.startswith(other + "_")]
    return max(candidates, key=len) if candidates else name


def run(names, images: int = 100, rounds: int = 5) -> list[dict]:
    from deeplense_tf.simulation import recipes
    from deeplense_tf.simulation.simulator import example_rng

    from threadpoolctl import threadpool_limits

    simulators = {name: recipes.get(name).simulator() for name in names}
    best = {name: float("inf") for name in names}
    with threadpool_limits(1):
        for sim in simulators.values():
            sim.simulate(example_rng(0, 0, 0))
        for _ in range(rounds):
            for name, sim in simulators.items():
                start = time.perf_counter()
                for i in range(images):
                    sim.simulate(example_rng(1, 0, i))
                best[name] = min(best[name], (time.perf_counter() - start) / images)
    rows = []
    for name in names:
        twin = twin_of(name, names)
        rows.append({"recipe": name, "ms_per_image": 1e3 * best[name], "twin": twin,
                     "ratio_to_twin": best[name] / best[twin]})
    return rows


def main(argv):
    del argv
    from deeplense_tf import console
    from deeplense_tf.benchmarks import measure

    console.setup()
    names = [n for n in flags.FLAGS.recipes if n]
    rows = run(names, flags.FLAGS.images, flags.FLAGS.rounds)
    print(f"{'recipe':32s} {'ms/image':>9s}  ratio to twin")
    for row in rows:
        print(f"{row['recipe']:32s} {row['ms_per_image']:9.2f}  {row['ratio_to_twin']:.2f}x "
              f"({row['twin']})")
    if flags.FLAGS.output:
        with open(flags.FLAGS.output, "w") as f:
            json.dump({"machine": measure.machine(), "images": flags.FLAGS.images, "rounds": flags.FLAGS.rounds, "rows": rows},
                      f, indent=2)


if __name__ == "__main__":
    flags.DEFINE_list("recipes", DEFAULT.split(","), "Recipes to time.")
    flags.DEFINE_integer("images", 100, "Images per recipe per round.")
    flags.DEFINE_integer("rounds", 5, "Rounds; the best is kept.")
    flags.DEFINE_string("output", None, "JSON file for the results.")
    app.run(main)
