"""The core layer must import without NeMo, megatron-core or NeMo-Aligner."""

import subprocess
import sys


def test_core_imports_no_framework() -> None:
    code = (
        "import sys, nemo_gammapo.core\n"
        "frameworks = ('nemo', 'megatron', 'nemo_aligner', 'transformer_engine', 'apex')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in frameworks)\n"
        "print(bad)\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "[]"
