"""One name for a model everywhere: shipped names, `pretrained:NAME`, paths; and a run's
`model.keras` loads with plain Keras once the package is imported, as users write it."""

import os
import subprocess
import sys
import textwrap

import pytest

from deeplense_tf import export, pretrained

NAME = pretrained.list()[0]


def test_resolve_names_prefixed_names_and_paths(tmp_path):
    shipped = os.path.join(os.path.dirname(pretrained.__file__), f"{NAME}.keras")
    assert pretrained.resolve(NAME) == shipped
    assert pretrained.resolve(f"pretrained:{NAME}") == shipped
    own = tmp_path / "model.keras"
    own.write_bytes(b"")
    assert pretrained.resolve(str(own)) == str(own)
    assert pretrained.shipped_name(NAME) == NAME and pretrained.shipped_name(str(own)) is None
    # A file of a shipped model's spelling in the working directory is the user's.
    (tmp_path / NAME).write_bytes(b"")
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert pretrained.resolve(NAME) == NAME
        assert pretrained.resolve(f"pretrained:{NAME}") == shipped
    finally:
        os.chdir(cwd)


def test_unknown_models_are_refused_naming_what_is_expected():
    with pytest.raises(FileNotFoundError, match=r"--model=nope: neither an existing \.keras file .* "
                                                r"nor a shipped model \(pretrained:NAME, one of \["):
        pretrained.resolve("nope")
    with pytest.raises(ValueError, match=r"--init_from=pretrained:nope: 'nope' is not a shipped model"):
        pretrained.resolve("pretrained:nope", flag="--init_from")


def test_export_takes_a_shipped_name(tmp_path):
    path = export.export_saved_model(NAME, str(tmp_path), "axion", warmup_batch_sizes=[])
    assert os.path.exists(os.path.join(path, "saved_model.pb"))


@pytest.mark.parametrize("order", ["package_first", "keras_first"])
def test_plain_keras_loads_a_run_after_importing_the_package(tmp_path, order):
    """The documented way, in a fresh interpreter: no deeplense_tf.models import by hand."""
    source = os.path.join(os.path.dirname(pretrained.__file__), f"{NAME}.keras")
    model_path = tmp_path / "model.keras"
    model_path.write_bytes(open(source, "rb").read())
    imports = "import deeplense_tf\nimport keras" if order == "package_first" else \
        "import keras\nimport deeplense_tf"
    script = textwrap.dedent(f"""
        {imports.splitlines()[0]}
        {imports.splitlines()[1]}
        import numpy as np
        model = keras.saving.load_model({str(model_path)!r})
        out = model.predict(np.zeros((1, *model.input_shape[1:]), "float32"), verbose=0)
        print(sorted(out))
        """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "_std" in result.stdout
