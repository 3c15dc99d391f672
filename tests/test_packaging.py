"""Importing the harness with a foreign ``datasets`` package first on the path fails loudly."""

import subprocess
import sys


def test_shadowing_datasets_package_is_reported(tmp_path):
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "__init__.py").write_text("")
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import benchmark"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "shadows it" in proc.stderr and str(tmp_path / "datasets") in proc.stderr
