"""The tests import this checkout as ``dpcompat`` (whatever dpcompat is installed)."""
import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parents[1] / "checkout.py"))["import_checkout"]()
