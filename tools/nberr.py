"""Print the error of an executed notebook (debug helper for failed workflow jobs)."""
import re
import sys

import nbformat

for path in sys.argv[1:]:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                tb = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(out["traceback"]))
                print(f"{path}: {out['ename']}: {out['evalue']}\n{tb[-2500:]}")
