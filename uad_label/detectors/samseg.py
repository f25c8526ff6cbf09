"""FreeSurfer SAMSEG with its lesion model (Puonti et al. 2016; Cerri et al. 2021) as a detector.

SAMSEG segments the whole brain with a generative model: an atlas mesh deformed onto the scan, a
Gaussian mixture per tissue over all given contrasts, a bias field; its lesion model adds a lesion
class tied to white matter, an intensity mask per contrast (lesions brighter than cortex on FLAIR
and T2) and a lesion-shape VAE, and samples the lesion posterior by MCMC. The anomaly map is that
posterior (0-1). SAMSEG does its own atlas registration and bias correction, so it is fed our
work-space case: the modalities co-registered on one grid (template space for raw input, the
input grid for template-space input), from which the map goes back to the scan's native grid
through the detector base like every other detector's map.

SAMSEG (and TensorFlow, which its lesion model needs) runs in a child process, see samseg_runner.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .base import Detector, MapOutput
from .params import Param
from .samseg_runner import LESION_STRUCTURE, run_samseg, samseg_available

log = logging.getLogger(__name__)

# The lesion posterior is a probability; 0.3 is SAMSEG's own lesion threshold (run_samseg --threshold):
# the mask equals SAMSEG's lesion label. Not tuned on the evaluation patient.
DEFAULT_THRESHOLD = 0.3
# T1 first, as SAMSEG's documentation runs its lesion model (the first image drives the affine atlas
# registration; all images share one grid here, so the output grid is the same whichever comes first)
INPUT_ORDER = ("T1", "FLAIR", "T2")
_PATTERN = (-1, 0, 1)
_PATTERN_HELP = "SAMSEG lesion-mask pattern for {mod}: 1 = lesions brighter than cortex, -1 = darker, 0 = no constraint"


class Samseg(Detector):
    name = "samseg"
    description = ("FreeSurfer SAMSEG with its lesion model (Cerri et al. 2021): atlas-based generative tissue model "
                   "over FLAIR and, when given, T1 and T2; the lesion posterior (0-1) is the map. Training-free; "
                   "about 13 CPU-minutes per 1 mm case (20-30 minutes on 2 shared cores): for batch.")
    modalities = ("FLAIR",)
    optional_modalities = ("T1", "T2")
    params = (
        Param("samples", 50, int, "MCMC samples of the lesion posterior averaged (SAMSEG default 50)",
              minimum=1, maximum=1000),
        Param("burnin", 50, int, "MCMC burn-in sweeps before sampling (SAMSEG default 50)", minimum=0, maximum=1000),
        Param("shape_model", True, bool,
              "use SAMSEG's lesion-shape VAE and sampler; false = the plain EM lesion posterior (faster)"),
        Param("lesion_mask_flair", 1, int, _PATTERN_HELP.format(mod="FLAIR"), choices=_PATTERN),
        Param("lesion_mask_t1", 0, int, _PATTERN_HELP.format(mod="T1"), choices=_PATTERN),
        Param("lesion_mask_t2", 1, int, _PATTERN_HELP.format(mod="T2"), choices=_PATTERN),
        Param("max_iterations", 100, int, "maximum EM iterations of the model fit per resolution level (SAMSEG "
              "default 100; fewer = faster, coarser fit)", minimum=1, maximum=1000),
        Param("deformation_iterations", 20, int, "maximum atlas-deformation iterations per EM iteration (SAMSEG "
              "default 20)", minimum=1, maximum=1000),
        Param("threads", 0, int, "CPU threads for SAMSEG; 0 = all cores", minimum=0, maximum=256),
        Param("seed", 12345, int, "random seed of the lesion sampler (SAMSEG default 12345)", minimum=0),
    )

    def compute_map(self, case, params, progress):
        if not samseg_available():
            raise RuntimeError("samseg: no SAMSEG environment found (run `bash scripts/samseg_env.sh`, or set "
                               "UAD_SAMSEG_PYTHON to a Python with samseg and tensorflow)")
        mods = [m for m in INPUT_ORDER if m in case.arrays]
        patterns = [params[f"lesion_mask_{m.lower()}"] for m in mods]
        threads = params["threads"] or os.cpu_count() or 1
        import nibabel as nib

        remove_left_behind()
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
        try:
            (tmp / OWNER_FILE).write_text(str(os.getpid()))
            inputs = []
            for m in mods:
                path = tmp / f"{m}.nii.gz"
                nib.save(nib.Nifti1Image(np.asarray(case.arrays[m], np.float32), case.affine), str(path))
                inputs.append((m, path))
            out = run_samseg(inputs, patterns, tmp, samples=params["samples"], burnin=params["burnin"],
                             shape_model=params["shape_model"], threads=threads, seed=params["seed"],
                             max_iterations=params["max_iterations"],
                             deformation_iterations=params["deformation_iterations"],
                             progress=progress, log=lambda line: log.debug("[samseg] %s", line))
            posterior = np.asarray(nib.load(out["posterior"]).get_fdata(dtype=np.float32))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if posterior.shape != case.shape:
            raise RuntimeError(f"samseg: lesion posterior has shape {posterior.shape}, work grid {case.shape}")
        info = {"samseg": {
            "inputs": mods, "lesion_mask_pattern": dict(zip(mods, patterns)), "threads": threads,
            "seconds": round(out["seconds"], 1), "cpu_seconds": round(out["cpu_seconds"], 1),
            "stages_s": out["stages_s"], "max_rss_mb": round(out["max_rss_mb"]),
            "intracranial_ml": round(out["intracranial_mm3"] / 1000.0, 2),
            "lesion_ml": round(_volume(out, LESION_STRUCTURE) / 1000.0, 3),
            # SAMSEG's own soft volumes (sum of posteriors) per structure, for the reviewer
            "volumes_ml": {n: round(v / 1000.0, 3) for n, v in zip(out["names"], out["volumes_mm3"])},
        }}
        return MapOutput(np.clip(posterior, 0.0, 1.0), info=info)

    def default_threshold(self, work_map, case, params):
        return DEFAULT_THRESHOLD, "default: 0.3 on the lesion posterior (SAMSEG's own lesion threshold)"


TMP_PREFIX = "uad-samseg-"
OWNER_FILE = "owner.pid"
ORPHAN_AGE_S = 24 * 3600.0  # a folder without an owner file (older versions) counts as left behind after a day


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_left_behind(root: str | Path | None = None, now: float | None = None) -> list[Path]:
    """Remove the job folders of SAMSEG runs whose process is gone (killed with SIGKILL or SIGTERM, its cleanup
    never ran: a copy of every scan stays behind); returns them. A folder whose owner lives is kept."""
    import time

    now = time.time() if now is None else now
    removed = []
    for d in Path(root or tempfile.gettempdir()).glob(TMP_PREFIX + "*"):
        if not d.is_dir():
            continue
        try:
            owner = int((d / OWNER_FILE).read_text().strip())
            gone = not _alive(owner)
        except FileNotFoundError:
            gone = now - d.stat().st_mtime > ORPHAN_AGE_S
        except (ValueError, OSError):
            continue
        if gone:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    if removed:
        log.info("samseg: removed %d job folder(s) left behind by runs that were killed", len(removed))
    return removed


def _volume(out: dict, name: str) -> float:
    return float(dict(zip(out["names"], out["volumes_mm3"])).get(name, 0.0))
