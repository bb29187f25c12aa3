"""Imported first by every script in this folder, before anything named `seal`.

`python recipes/seal.py` puts this folder at the front of `sys.path`, where the script `seal.py` would
shadow the `seal` package for itself and for its siblings (`evaluate.py`, `report.py`). Dropping the
folder from the path makes `import seal` find the installed library; the scripts need nothing else
from here.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
