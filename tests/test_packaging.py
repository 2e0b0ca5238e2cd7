"""The card's folders install as steerlens subpackages, editable and as a built wheel."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import steerlens.analysis
import steerlens.probes
import steerlens.steering

ROOT = Path(__file__).resolve().parents[1]


def test_editable_install_maps_card_folders():
    assert Path(steerlens.probes.__file__).resolve() == ROOT / "probes" / "__init__.py"
    assert Path(steerlens.steering.__file__).resolve() == ROOT / "steering" / "__init__.py"
    assert Path(steerlens.analysis.__file__).resolve() == ROOT / "analysis" / "__init__.py"


@pytest.mark.slow
def test_built_wheel_imports_subpackages(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("steerlens-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for sub in ("probes", "steering", "analysis", "analysis/critique"):
        assert f"steerlens/{sub}/__init__.py" in names
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
    )
    code = (
        f"import sys; sys.path.insert(0, {str(target)!r}); import steerlens.probes, steerlens.steering, "
        f"steerlens.analysis, steerlens; assert steerlens.probes.__file__.startswith({str(target)!r}), "
        "steerlens.probes.__file__; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
