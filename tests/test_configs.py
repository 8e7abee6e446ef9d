"""Every flagfile in configs/ is a valid, documented experiment (none left untested).

smoke.cfg also runs end to end in tests/training; here each training flagfile is parsed
with the real flags (a misspelled flag fails), resolved to a TrainConfig, and its model
is built at its data set's image size.
"""

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.cfg"))
TRAINING = [c for c in CONFIGS if "--dataset=" in c.read_text()]


def test_configs_exist():
    assert any(c.name == "smoke.cfg" for c in TRAINING)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_header_says_command_machine_time_and_result(path):
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    text = "\n".join(header)
    assert "python -m deeplense_tf." in text, f"{path.name}: no command in the header"
    for word in ("Machine", "Time"):
        assert word in text, f"{path.name}: header lacks '{word}:'"
    assert "Result" in text or "Expected" in text, f"{path.name}: no expected result"
    assert "/work" not in path.read_text() and "/home" not in path.read_text()


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: p.name)
def test_training_flagfile_resolves_and_builds(path, tmp_path):
    from absl import flags

    from deeplense_tf import models, train
    from deeplense_tf.simulation import recipes

    flag_values = flags.FlagValues()
    train.define_flags(flag_values)
    flag_values(["train", f"--flagfile={path}", f"--workdir={tmp_path}", "--data_dir=DATA"])
    config = train.config_from_flags(flag_values)
    name = config.dataset.split("/")[1].split(":")[0].split("__")[0]
    recipe = recipes.get(name.removesuffix("_tiny"))
    n = recipe.num_pix
    for target in config.targets:
        assert target in recipe.targets or target in recipe.param_names, target
    model = models.build_regressor(
        config.model, image_shape=(n, n, 1), targets=config.targets, head=config.head,
        normalization=config.normalization, pixel_mean=0.0, pixel_std=1.0, asinh_scale=1.0,
        target_mean=[0.0] * len(config.targets), target_std=[1.0] * len(config.targets),
        variant=config.variant or None, **config.model_overrides)
    assert models.count_params_and_flops(model).params * 4 < 20 * 2**20  # shippable size


def test_command_modules_import_together_without_defining_flags():
    """Importing a command's module (a test, a notebook, another command) defines no flag:
    the commands share names such as --workdir and --data_dir, so each defines its flags
    only when it runs."""
    import subprocess
    import sys

    modules = ["train", "quickstart", "evaluate", "export", "serve", "build_dataset",
               "package_model", "benchmark", "eda", "calibrate", "reference.__main__"]
    code = ("from absl import flags\n"
            + "".join(f"import deeplense_tf.{m}\n" for m in modules)
            + "print(sorted(m for m in flags.FLAGS.flags_by_module_dict() if 'deeplense' in m))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
