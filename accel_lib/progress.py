"""Progress for long waits: a tqdm bar for people, silence for batch runs (ACCEL_LIB_PROGRESS=0)."""
import os


def enabled() -> bool:
    """True unless ACCEL_LIB_PROGRESS is set to 0/false/no."""
    return os.environ.get("ACCEL_LIB_PROGRESS", "1").lower() not in ("0", "false", "no")


def bar(total=None, desc="", unit="step", show=True):
    """A tqdm progress bar (off in batch runs, or when ``show`` is False)."""
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit=unit, disable=not (show and enabled()), leave=False, mininterval=0.5)
