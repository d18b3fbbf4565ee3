"""Summarise an executed tutorial run for the terminal: parity and the top-5 the service returned."""
import sys
from pathlib import Path


def summary(out_dir):
    """Print the lines a reader of `make tutorial` wants to see from the executed notebooks."""
    import nbformat
    keys = ("parity", "device check", "confidence:", "service vs in-process", "RANDOM WEIGHTS", "score ",
            "held-out accuracy")
    for nb_path in sorted(Path(out_dir, "notebooks").glob("0*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        lines = [line for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                 if o.get("output_type") == "stream" and o.get("name") == "stdout"
                 for line in o.get("text", "").splitlines() if any(k in line for k in keys)]
        if lines:
            print(f"-- {nb_path.name}")
            print("\n".join(f"   {line}" for line in lines))


if __name__ == "__main__":
    summary(sys.argv[1])
