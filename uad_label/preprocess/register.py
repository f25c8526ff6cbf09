"""Registration to the MNI152 template (work in progress)."""


def registered_pipeline(imgs, ref_name, user_mask, opts, timings):  # pragma: no cover
    raise NotImplementedError("raw-scan registration pipeline: coming next")
