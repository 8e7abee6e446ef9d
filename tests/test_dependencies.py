"""The declared dependencies, the lock file and the package's imports agree.

- Every requirement in setup.cfg (install_requires and every extra) is pinned in
  requirements.lock to a version inside its declared range, so our own commands install a
  tested set and a lock left behind by a setup.cfg change fails here, not on a user.
- Every third-party module the package imports is declared, and every declared runtime
  dependency is imported (or listed below with the reason it is needed anyway).
- The lower bounds install together and the package imports with them (slow: it builds a
  virtual environment from the package index).
"""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import os
import pathlib
import re
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"

# Declared though no module of the package imports them: what uses them instead.
USED_WITHOUT_IMPORT = {
    "importlib-resources": "TFDS imports it at start-up but declares it only for Python < 3.9",
    "pyarrow": "astropy's Parquet writer (predict --output=*.parquet)",
}
# Extras whose packages serve commands outside the package's own modules.
TOOL_EXTRAS = {"dev", "tfds-cli", "profile"}


def read_requirements(setup_cfg: pathlib.Path = ROOT / "setup.cfg") -> dict[str, list[Requirement]]:
    """{'install_requires': [...], extra: [...]} from setup.cfg, comments dropped."""
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)

    def parse(text: str) -> list[Requirement]:
        lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        return [Requirement(line) for line in lines if line]

    groups = {"install_requires": parse(parser["options"]["install_requires"])}
    for extra, text in parser["options.extras_require"].items():
        groups[extra] = parse(text)
    return groups


def read_lock(path: pathlib.Path = LOCK) -> dict[str, str]:
    """{canonical name: version} from a pip constraints file of `name==version` lines."""
    pins = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if not match:
            raise ValueError(f"{path.name} line {number}: expected 'name==version', got {raw!r}")
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def lock_problems(groups: dict[str, list[Requirement]], pins: dict[str, str]) -> list[str]:
    problems = []
    for group, requirements in groups.items():
        for requirement in requirements:
            name = canonicalize_name(requirement.name)
            if name not in pins:
                problems.append(f"{requirement} ({group}) is not pinned in requirements.lock")
            elif not requirement.specifier.contains(pins[name], prereleases=True):
                problems.append(f"requirements.lock pins {name}=={pins[name]}, outside {group}'s "
                                f"'{requirement}'")
    return problems


def test_lock_pins_every_declared_requirement_inside_its_range():
    problems = lock_problems(read_requirements(), read_lock())
    assert not problems, ("requirements.lock is out of date with setup.cfg (regenerate it as its "
                          "header says):\n" + "\n".join(problems))


def test_lock_check_names_what_is_wrong(tmp_path):
    groups = {"install_requires": [Requirement("numpy>=2.0"), Requirement("scipy>=1.13")]}
    lock = tmp_path / "requirements.lock"
    lock.write_text("numpy==1.26.4\n")
    problems = lock_problems(groups, read_lock(lock))
    assert problems == ["requirements.lock pins numpy==1.26.4, outside install_requires's 'numpy>=2.0'",
                        "scipy>=1.13 (install_requires) is not pinned in requirements.lock"]
    lock.write_text("numpy>=2\n")
    with pytest.raises(ValueError, match=r"line 1: expected 'name==version', got 'numpy>=2'"):
        read_lock(lock)


def imported_modules(roots=("deeplense_tf", "datasets")) -> dict[str, set[str]]:
    """{top-level third-party module: files importing it}, function-level imports included."""
    found: dict[str, set[str]] = {}
    for root in roots:
        for path in (ROOT / root).rglob("*.py"):
            if path.name.endswith("_test.py"):
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top == "google":  # a namespace package: the distribution is per subpackage
                        top = ".".join(name.split(".")[:2])
                    if top.split(".")[0] in sys.stdlib_module_names or top == "deeplense_tf":
                        continue
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _distributions_of(module: str) -> set[str]:
    mapping = importlib.metadata.packages_distributions()
    if module.startswith("google."):
        # packages_distributions() maps only the namespace `google`; ask the files instead.
        prefix = module.replace(".", "/") + "/"
        return {canonicalize_name(d.metadata["Name"]) for d in importlib.metadata.distributions()
                if any(str(f).startswith(prefix) for f in (d.files or ()))}
    return {canonicalize_name(name) for name in mapping.get(module, ())}


def test_imports_and_declared_dependencies_agree():
    groups = read_requirements()
    runtime = {canonicalize_name(r.name) for group, reqs in groups.items() if group not in TOOL_EXTRAS
               for r in reqs}
    undeclared, imported_dists = [], set()
    for module, files in sorted(imported_modules().items()):
        dists = _distributions_of(module)
        assert dists, f"no installed distribution provides {module!r} (imported by {sorted(files)})"
        imported_dists |= dists
        if not dists & runtime:
            undeclared.append(f"{module} (from {'/'.join(sorted(dists))}; imported by {sorted(files)[:3]})")
    assert not undeclared, "imported but not declared in setup.cfg:\n" + "\n".join(undeclared)
    # tensorflow-cpu and tensorflow both provide `tensorflow`: an extra of alternatives.
    unused = sorted(runtime - imported_dists - set(USED_WITHOUT_IMPORT)
                    - {"tensorflow", "tensorflow-cpu"})
    assert not unused, f"declared in setup.cfg but never imported by the package: {unused}"
    stale = sorted(set(USED_WITHOUT_IMPORT) - runtime)
    assert not stale, f"USED_WITHOUT_IMPORT names dependencies setup.cfg no longer declares: {stale}"
    imported_anyway = sorted(set(USED_WITHOUT_IMPORT) & imported_dists)
    assert not imported_anyway, f"USED_WITHOUT_IMPORT names dependencies the package imports: {imported_anyway}"


def lower_bound_constraints(groups, extras=("cpu", "dev")) -> list[str]:
    """`name==lower` for every `>=` bound of install_requires and the given extras."""
    lines = []
    for group in ("install_requires", *extras):
        for requirement in groups[group]:
            lower = [spec.version for spec in requirement.specifier if spec.operator == ">="]
            if not lower:
                raise AssertionError(f"{requirement} ({group}) declares no lower bound")
            lines.append(f"{canonicalize_name(requirement.name)}=={lower[0]}")
    return lines


@pytest.mark.slow
def test_lower_bounds_install_and_import(tmp_path):
    """A fresh environment with every declared lower bound: installs, imports every module."""
    constraints = tmp_path / "lower-bounds.txt"
    constraints.write_text("\n".join(lower_bound_constraints(read_requirements())) + "\n")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              "-c", str(constraints), f"{ROOT}[cpu,dev]"],
                             capture_output=True, text=True, env=env, timeout=1800)
    errors = "".join(line for line in install.stderr.splitlines(True) if not line.startswith("WARNING"))
    assert install.returncode == 0, f"lower bounds do not install together:\n{errors[-4000:]}"
    script = (
        "import importlib, pkgutil, deeplense_tf\n"
        "names = [m.name for m in pkgutil.walk_packages(deeplense_tf.__path__, 'deeplense_tf.')\n"
        "         if not m.name.endswith('__main__')]  # those run their command\n"
        "for name in names: importlib.import_module(name)\n"
        "from deeplense_tf.simulation import recipes\n"
        "from deeplense_tf.simulation.simulator import example_rng\n"
        "lens = recipes.get('model_ii_axion').simulator().simulate(example_rng(0, 0, 0))\n"
        "assert lens.image.shape == (64, 64) and lens.image.sum() > 0, lens.image.shape\n"
        "print(len(names), 'modules imported, one lens simulated')\n")
    result = subprocess.run([python, "-c", script], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, f"import with lower bounds failed:\n{result.stderr[-4000:]}"
