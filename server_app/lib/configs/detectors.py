"""Which detectors the app serves: `--conf models a,b` or all that uad_label provides."""
import logging

from uad_label.detectors import available, get_detector

log = logging.getLogger(__name__)


def enabled_detectors(conf: dict) -> list[str]:
    wanted = conf.get("models", "all")
    if wanted in ("all", "", None):
        names = []
        for name in available():  # one broken detector (missing optional dependency) must not stop the server
            try:
                get_detector(name)
                names.append(name)
            except Exception as exc:
                log.error("detector %s is not served: %s", name, exc)
        return names
    names = [m.strip() for m in wanted.split(",") if m.strip()]
    unknown = [n for n in names if n not in available()]
    if unknown:
        raise ValueError(f"--conf models: unknown detector(s) {unknown}; available: {available()}")
    return names
