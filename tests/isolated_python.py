"""A Python command line in which mtlguard cannot be imported (helper for the export / serving tests;
holds no tests).

``python -I -S`` skips the site module, so the ``.pth`` file of mtlguard's editable install is never
read; the bootstrap puts back only the folders holding numpy, onnxruntime and Pillow, then runs the
script as ``__main__``.  The script itself can check ``importlib.util.find_spec("mtlguard") is None``.
"""
from __future__ import annotations

import sys
from pathlib import Path


def dependency_dirs() -> list[str]:
    """The import roots of numpy, onnxruntime and Pillow (site-packages folders)."""
    import numpy
    import onnxruntime
    import PIL

    return sorted({str(Path(m.__file__).resolve().parents[1]) for m in (numpy, onnxruntime, PIL)})


def isolated_command(script, *args) -> list[str]:
    """``[python, -I, -S, -c, bootstrap, script, *args]``: run ``script`` with only the dependencies."""
    bootstrap = (f"import sys, runpy; sys.path[:0] = {dependency_dirs()!r}; sys.argv = sys.argv[1:]; "
                 "runpy.run_path(sys.argv[0], run_name='__main__')")
    return [sys.executable, "-I", "-S", "-c", bootstrap, str(script), *map(str, args)]
