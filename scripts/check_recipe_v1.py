"""Render recipe/recipe.yaml (rattler-build's v1 format) with py-rattler-build, offline, and
check that it says what recipe/meta.yaml (checked by scripts/check_recipe.py) says.

    pip install py-rattler-build      (about 80 MB; not a dependency of make test)
    .venv/bin/python scripts/check_recipe_v1.py

Rendering resolves the Jinja, the context and the variant (qiime2_epoch from
recipe/conda_build_config.yaml); it solves no dependency and builds nothing (that needs
the conda-forge and QIIME 2 channels). Checked: name and version equal setup.py's; the run
requirements, run constraints and test requirements equal meta.yaml's rendered ones; the
tests import the plugin and run ``pytest --pyargs q2_aam``.
"""
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from check_recipe import render, setup_data  # noqa: E402


def rendered_v1() -> dict:
    try:
        from rattler_build.stage0 import Stage0Recipe
        from rattler_build.variant_config import VariantConfig
    except ImportError:
        raise SystemExit("py-rattler-build is not installed: pip install py-rattler-build")
    variants = yaml.safe_load((ROOT / "recipe" / "conda_build_config.yaml").read_text())
    rendered = Stage0Recipe.from_file(str(ROOT / "recipe" / "recipe.yaml")).render(
        VariantConfig(variants))
    if len(rendered) != 1:
        raise SystemExit(f"expected one variant, got {len(rendered)}")
    return rendered[0].recipe.to_dict()


def problems(v1: dict, meta: dict, setup: dict) -> list[str]:
    found = []
    for key in ("name", "version"):
        if str(v1["package"][key]) != str(setup[key]):
            found.append(f"package {key} {v1['package'][key]!r} != setup.py's {setup[key]!r}")
    pairs = [("run requirements", v1["requirements"]["run"], meta["requirements"]["run"]),
             ("run constraints", v1["requirements"].get("run_constraints", []),
              meta["requirements"].get("run_constrained", [])),
             ("test requirements",
              [r for t in v1.get("tests", []) for r in t.get("requirements", {}).get("run", [])],
              meta["test"]["requires"])]
    for what, new, old in pairs:
        if sorted(new) != sorted(old):
            found.append(f"{what} differ: only in recipe.yaml {sorted(set(new) - set(old))}, "
                         f"only in meta.yaml {sorted(set(old) - set(new))}")
    imports = [i for t in v1.get("tests", []) for i in t.get("python", {}).get("imports", [])]
    if "q2_aam.plugin_setup" not in imports:
        found.append("the v1 tests do not import q2_aam.plugin_setup")
    scripts = [c for t in v1.get("tests", []) for c in t.get("script", [])]
    if "pytest --pyargs q2_aam" not in scripts:
        found.append("the v1 tests do not run pytest --pyargs q2_aam")
    return found


def main():
    v1, meta, setup = rendered_v1(), render(), setup_data()
    print(f"rendered {v1['package']['name']} {v1['package']['version']} "
          f"({v1['build'].get('string')}): {len(v1['requirements']['run'])} run requirements")
    found = problems(v1, meta, setup)
    for problem in found:
        print(f"PROBLEM: {problem}")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
