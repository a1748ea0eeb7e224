"""The conda recipe renders offline and agrees with setup.py and the code (issue 15);
scripts/check_recipe.py says what is and is not checked."""
import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def check():
    spec = importlib.util.spec_from_file_location("check_recipe",
                                                  ROOT / "scripts" / "check_recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_renders_and_agrees_with_setup_py(check):
    recipe = check.render()
    assert recipe["package"] == {"name": "q2-aam", "version": "0.1.0"}
    assert "qiime2 2024.10.*" in recipe["requirements"]["run"]
    assert check.problems() == []


def test_the_check_can_fail(check, tmp_path, monkeypatch):
    """A stale version, an unused QIIME 2 package and a dropped dependency are named."""
    shutil.copytree(ROOT / "recipe", tmp_path / "recipe")
    meta = tmp_path / "recipe" / "meta.yaml"
    text = meta.read_text()
    text = text.replace("version: {{ data.get('version') }}", "version: 0.0.9")
    text = text.replace("    - safetensors >=0.4\n", "    - q2-diversity-lib {{ qiime2_epoch }}.*\n")
    text = text.replace("    - pytest --pyargs q2_aam\n", "")
    meta.write_text(text)
    monkeypatch.setattr(check, "RECIPE", tmp_path / "recipe")
    found = "\n".join(check.problems())
    assert "version '0.0.9' != setup.py's '0.1.0'" in found
    assert "'q2-diversity-lib' is never imported" in found
    assert "install_requires 'safetensors>=0.4' has no run requirement" in found
    assert "does not run pytest --pyargs q2_aam" in found
