"""Check recipe/meta.yaml offline: render its Jinja as conda-build would, then compare it
with setup.py and the code.

    .venv/bin/python scripts/check_recipe.py        (make test runs it: tests/test_recipe.py)

conda-build itself is not installed here (it needs conda); the template is rendered with
jinja2 and the two context functions this recipe uses, ``load_setup_py_data()`` (setup.py's
keyword arguments, read by running setup.py with ``setuptools.setup`` replaced, as
conda-build does) and ``PYTHON``, plus the variables of ``conda_build_config.yaml``.
Checked: name and version come from setup.py; every ``install_requires`` entry (PyPI name
mapped to its conda name) is a run requirement with at least the same lower bound; every
``q2-*``/``qiime2`` run requirement is imported by the code; the ``qiime2.plugins`` entry
point exists; the test section imports the plugin, needs q2cli and runs the shipped tests
(``pytest --pyargs q2_aam``), and those tests exist in the package.
"""
import ast
import re
import runpy
import sys
from pathlib import Path
from unittest import mock

import jinja2
import yaml

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipe"
#: PyPI name -> conda-forge name, where they differ.
CONDA_NAMES = {"torch": "pytorch", "matplotlib": "matplotlib-base"}
#: run requirement -> the module the code imports for it.
MODULES = {"qiime2": "qiime2", "q2-types": "q2_types",
           "q2-sample-classifier": "q2_sample_classifier", "q2templates": "q2templates",
           "q2-feature-table": "q2_feature_table"}


def setup_data() -> dict:
    """setup.py's keyword arguments."""
    captured = {}
    with mock.patch("setuptools.setup", lambda **kwargs: captured.update(kwargs)):
        runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    return captured


def render() -> dict:
    variables = yaml.safe_load((RECIPE / "conda_build_config.yaml").read_text())
    context = {name: values[0] for name, values in variables.items()}
    template = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(
        (RECIPE / "meta.yaml").read_text())
    text = template.render(load_setup_py_data=setup_data, PYTHON="python", **context)
    return yaml.safe_load(text)


def _requirement(spec: str) -> tuple[str, str]:
    """``'accelerate >=0.30'`` or ``'accelerate>=0.30'`` -> ``('accelerate', '>=0.30')``."""
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", spec)
    return match.group(1).lower(), match.group(2).replace(" ", "")


def _imported_modules() -> set:
    names = set()
    for path in (ROOT / "q2_aam").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "get_action"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                # A pipeline's ctx.get_action("feature_table", ...) uses q2_feature_table.
                names.add(f"q2_{node.args[0].value}")
    return names


def problems() -> list[str]:
    """What is wrong with the recipe (empty when it is right)."""
    found = []
    recipe, setup = render(), setup_data()
    if recipe["package"]["name"] != setup["name"]:
        found.append(f"package name {recipe['package']['name']!r} != setup.py's "
                     f"{setup['name']!r}")
    if str(recipe["package"]["version"]) != setup["version"]:
        found.append(f"version {recipe['package']['version']!r} != setup.py's "
                     f"{setup['version']!r}")
    run = dict(_requirement(r) for r in recipe["requirements"]["run"])
    for spec in setup["install_requires"]:
        name, bound = _requirement(spec)
        conda = CONDA_NAMES.get(name, name)
        if conda not in run:
            found.append(f"install_requires {spec!r} has no run requirement {conda!r}")
        elif bound and run[conda] != bound:
            found.append(f"run requirement {conda} {run[conda]!r} differs from setup.py's "
                         f"{bound!r}")
    imported = _imported_modules()
    for name in run:
        module = MODULES.get(name)
        if (name.startswith("q2") or module) and (module or name) not in imported:
            found.append(f"run requirement {name!r} is never imported by q2_aam")
    points = setup.get("entry_points", {}).get("qiime2.plugins", [])
    for point in points:
        target = point.split("=", 1)[1]
        module, attribute = target.split(":")
        source = ROOT / (module.replace(".", "/") + ".py")
        if not source.is_file() or not re.search(rf"^{attribute}\s*=", source.read_text(),
                                                 re.M):
            found.append(f"entry point {point!r}: {attribute} is not defined in {source}")
    if not points:
        found.append("setup.py declares no qiime2.plugins entry point")
    test = recipe.get("test", {})
    if "q2_aam.plugin_setup" not in test.get("imports", []):
        found.append("the recipe's test does not import q2_aam.plugin_setup")
    if not any(_requirement(r)[0] == "q2cli" for r in test.get("requires", [])):
        found.append("the recipe's test does not require q2cli")
    if "pytest --pyargs q2_aam" not in test.get("commands", []):
        found.append("the recipe's test does not run pytest --pyargs q2_aam")
    if not list((ROOT / "q2_aam" / "tests").glob("test_*.py")):
        found.append("no tests are shipped in q2_aam/tests")
    if "qiime2_epoch" not in (RECIPE / "meta.yaml").read_text():
        found.append("QIIME 2 packages are not pinned to {{ qiime2_epoch }}")
    return found


def main():
    recipe = render()
    print(f"rendered {recipe['package']['name']} {recipe['package']['version']}: "
          f"{len(recipe['requirements']['run'])} run requirements, test: "
          f"{recipe['test']['commands']}")
    found = problems()
    for problem in found:
        print(f"PROBLEM: {problem}")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
