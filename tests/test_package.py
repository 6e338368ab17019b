"""What `import recur` loads: the light core, not torch, tqdm or scipy.linalg's package."""
import subprocess
import sys


def test_import_loads_only_the_core():
    script = ("import sys, recur; heavy = [m for m in ('torch', 'tqdm', 'scipy.linalg', "
              "'scipy.special') if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "", f"import recur also imported {out}"


def test_scipy_linalg_still_imports_after_recur():
    script = ("import recur, numpy as np, scipy.linalg; "
              "from scipy.linalg import cython_blas; print(scipy.linalg.norm(np.ones(4)))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "2.0"
