"""The ClientApp module stays light: Flower starts a fresh process per message in deployment."""

import subprocess
import sys


def test_importing_the_apps_loads_neither_torch_nor_opacus() -> None:
    code = ("import sys, client.app, server.app; "
            "print('torch' in sys.modules, 'opacus' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False False"

