"""Which detectors the app serves: `--conf models a,b` or all that uad_label provides."""
from uad_label.detectors import available


def enabled_detectors(conf: dict) -> list[str]:
    wanted = conf.get("models", "all")
    names = available() if wanted in ("all", "", None) else [m.strip() for m in wanted.split(",") if m.strip()]
    unknown = [n for n in names if n not in available()]
    if unknown:
        raise ValueError(f"--conf models: unknown detector(s) {unknown}; available: {available()}")
    return names
