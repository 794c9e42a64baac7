"""The library side of memzoo (models, loading, generation) imports without Lightning."""

import subprocess
import sys


def test_import_zoo_loads_no_lightning():
    code = "import zoo, sys; assert 'lightning' not in sys.modules, sorted(m for m in sys.modules if 'lightning' in m)[:5]"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
