"""Registration of raw scans to the MNI152 template (SimpleITK), and the raw-scan pipeline.

Reference modality -> template: moments initialisation on the head mask, then multi-resolution
rigid (Euler3D) and affine registration with Mattes mutual information, sampled at random inside
the template's brain mask dilated by a few mm (so the scan's skull, absent from the skull-stripped
template, weighs little). Other modalities -> reference: rigid, Mattes MI, identity
initialisation (same scanner session), inside the reference's head mask.

Quality check (:func:`registration_quality`): final Mattes MI at full resolution, the fraction of
the template brain that falls inside the scan's head mask, and the fraction of the template brain
the scan covers. A failed check raises :class:`~uad_label.preprocess.case.RegistrationError`.
"""
from __future__ import annotations

import functools
import time
import warnings

import numpy as np
import SimpleITK as sitk

from uad_label.preprocess.bias import head_mask, n4_bias_correct, shrink_factors
from uad_label.preprocess.case import (
    INTERPOLATORS,
    PreprocessedCase,
    PreprocessOptions,
    RegistrationError,
    isotropic_ras_grid,
    onto_grid,
    onto_grid_xyz,
)
from uad_label.preprocess.geometry import ras_affine, same_geometry
from uad_label.runtime import reproducible_registration

__all__ = [
    "intensity_for_registration",
    "register_to_template",
    "register_rigid",
    "flatten_affine",
    "registration_quality",
    "registered_pipeline",
    "work_grid_for",
]


def intensity_for_registration(image: sitk.Image, mask: sitk.Image | None = None,
                               upper_percentile: float = 99.5) -> sitk.Image:
    """float32 image clipped to [0, percentile] (inside ``mask``) and scaled to [0, 1], so that a
    few bright voxels do not squeeze the MI histogram."""
    img = sitk.Cast(image, sitk.sitkFloat32)
    arr = sitk.GetArrayViewFromImage(img)
    vals = arr[sitk.GetArrayViewFromImage(mask) > 0] if mask is not None else arr[arr > 0]
    hi = float(np.percentile(vals, upper_percentile)) if vals.size else float(arr.max())
    hi = hi if hi > 0 else 1.0
    return sitk.Cast(sitk.Clamp(img, sitk.sitkFloat32, 0.0, hi) / hi, sitk.sitkFloat32)


def flatten_affine(transform: sitk.Transform) -> sitk.AffineTransform:
    """Single AffineTransform equal to a (composite of) linear transform(s)."""
    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float) * 100.0
    out = np.array([transform.TransformPoint(tuple(p)) for p in pts])
    matrix = ((out[1:] - out[0]) / 100.0).T
    aff = sitk.AffineTransform(3)
    aff.SetMatrix(tuple(matrix.ravel()))
    aff.SetTranslation(tuple(out[0]))
    return aff


def _method(opts: PreprocessOptions, fixed_mask: sitk.Image | None, shrink, sigmas, iterations,
            learning_rate: float = 1.0) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(opts.histogram_bins))
    # Mattes MI differentiates the moving image only: the fixed gradient image was computed and never
    # used (identical transforms without it, 0.1-0.2 s less per level)
    reg.MetricUseFixedImageGradientFilterOff()
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(float(opts.sampling_percentage), int(opts.seed))
    if fixed_mask is not None:
        reg.SetMetricFixedMask(fixed_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=learning_rate, minStep=opts.min_step_mm, numberOfIterations=int(iterations),
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([int(s) for s in shrink])
    reg.SetSmoothingSigmasPerLevel([float(s) for s in sigmas])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return reg


@functools.lru_cache(maxsize=4)
def _registration_template(spacing_mm: float, threshold: float):
    """Template T1, metric mask (brain dilated 6 mm) and initialisation mask (brain dilated
    12 mm, roughly the head) on a ``spacing_mm`` grid (block averages of the 1 mm template)."""
    from uad_label.template import load_template_brain_mask, load_template_t1

    t1 = load_template_t1()
    f = [max(1, int(round(spacing_mm / s))) for s in t1.GetSpacing()]
    fixed = sitk.Cast(sitk.BinShrink(t1, f), sitk.sitkFloat32)
    brain = sitk.BinShrink(sitk.Cast(load_template_brain_mask(threshold), sitk.sitkFloat32), f) >= 0.5
    brain = sitk.Cast(brain, sitk.sitkUInt8)
    sp = min(fixed.GetSpacing())
    metric_mask = sitk.BinaryDilate(brain, [max(1, int(round(6.0 / sp)))] * 3)
    init_mask = sitk.BinaryDilate(brain, [max(1, int(round(12.0 / sp)))] * 3)
    return fixed, metric_mask, sitk.Cast(init_mask, sitk.sitkFloat32)


@reproducible_registration()
def register_to_template(moving: sitk.Image, opts: PreprocessOptions,
                         moving_head: sitk.Image | None = None) -> tuple[sitk.AffineTransform, dict]:
    """Rigid then affine registration of ``moving`` (a raw scan, skull included) to the template.

    The template is used at ``opts.registration_spacing_mm`` (2 mm) and the scan is block-averaged
    to about that spacing first; shrink factors apply on top. Returns the AffineTransform mapping
    template (fixed) physical points to ``moving`` physical points (ITK convention: it resamples
    ``moving`` onto the template grid), and a dict of per-stage metric values, iterations, times.
    With UAD_REPRODUCIBLE_REGISTRATION=1 it runs on one ITK thread and a scan always gets the same
    transform (ITK's threaded Mattes MI sums in a varying order; :func:`uad_label.runtime.itk_single_threaded`).
    """
    info: dict = {}
    fix, metric_mask, init_mask = _registration_template(float(opts.registration_spacing_mm),
                                                         float(opts.template_mask_threshold))
    factors = shrink_factors(moving.GetSpacing(), opts.registration_spacing_mm)
    mov = sitk.BinShrink(sitk.Cast(moving, sitk.sitkFloat32), factors)
    if moving_head is None:
        moving_head = head_mask(mov)
    moving_head = onto_grid(moving_head, mov, interp=sitk.sitkNearestNeighbor, out_type=sitk.sitkUInt8)
    mov = intensity_for_registration(mov, moving_head)

    def stage(name, transform, shrink, sigmas, iterations, learning_rate):
        """One multi-resolution stage, optimising `transform` in place; records metric, iterations, time."""
        t = time.perf_counter()
        reg = _method(opts, metric_mask, shrink, sigmas, iterations, learning_rate=learning_rate)
        reg.SetInitialTransform(transform, inPlace=True)
        reg.Execute(fix, mov)
        info[f"{name}_metric"] = float(reg.GetMetricValue())
        info[f"{name}_iterations"] = int(reg.GetOptimizerIteration())
        info[f"{name}_seconds"] = time.perf_counter() - t

    # centre of mass of the dilated template brain (roughly the head) <-> the scan's head mask
    init = sitk.CenteredTransformInitializer(
        init_mask, sitk.Cast(moving_head, sitk.sitkFloat32), sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.MOMENTS)
    rigid = sitk.Euler3DTransform(init)
    info["init_translation"] = list(rigid.GetTranslation())

    stage("rigid", rigid, opts.registration_shrink, opts.registration_sigmas_mm, opts.rigid_iterations, 2.0)
    final = flatten_affine(rigid)

    if opts.affine:
        aff = sitk.AffineTransform(3)
        aff.SetCenter(rigid.GetCenter())
        aff.SetMatrix(rigid.GetMatrix())
        aff.SetTranslation(rigid.GetTranslation())
        stage("affine", aff, opts.affine_shrink, opts.affine_sigmas_mm, opts.affine_iterations, 1.0)
        m = np.array(aff.GetMatrix()).reshape(3, 3)
        sv = np.linalg.svd(m, compute_uv=False)
        info["affine_scales"] = sv.tolist()
        if sv.min() < 0.67 or sv.max() > 1.5 or np.linalg.det(m) <= 0:
            warnings.warn(f"affine registration gave implausible scales {sv}; keeping the rigid result")
            info["affine_rejected"] = True
        else:
            final = flatten_affine(aff)
    # metric with the final transform on the finest registration grid, fixed sampling seed
    ev = _method(opts, metric_mask, [1], [0.0], 1)
    ev.MetricUseMovingImageGradientFilterOff()  # a value needs no gradient image
    ev.SetInitialTransform(final)
    info["mutual_information"] = float(ev.MetricEvaluate(fix, mov))
    return final, info


@reproducible_registration()
def register_rigid(fixed: sitk.Image, moving: sitk.Image, opts: PreprocessOptions,
                   fixed_mask: sitk.Image | None = None, spacing_mm: float = 2.0,
                   moving_mask: sitk.Image | None = None) -> tuple[sitk.AffineTransform, dict]:
    """Rigid registration of two scans of one session (identity start). ``fixed`` is resampled to
    isotropic ``spacing_mm`` (anisotropic slices would not survive shrinking). Returns the
    transform fixed physical -> moving physical and metric info. ``moving_mask``: the moving
    scan's head mask (e.g. the pipeline's, on its block-averaged grid), else computed here.

    The metric's gradients are computed at the sampled points only (ITK's image-gradient filters
    off) and ``opts.intrastudy_sampling_percentage`` of the head voxels are sampled: on the 8
    T1W/T2W registrations of the raw clinical studies, 0.39 mm mean error against the dataset's
    own transforms, 8/8 accepted, 0.67 CPU s each, against 0.43 mm, 4/8 accepted (the optimiser
    left the identity for worse) and 1.55 CPU s with the filters on and 20 % samples
    (benchmarks/tissue_outlier/intrastudy.md)."""

    t0 = time.perf_counter()
    if fixed_mask is None:
        fixed_mask = head_mask(sitk.BinShrink(fixed, shrink_factors(fixed.GetSpacing(), spacing_mm)))
    grid = isotropic_ras_grid(fixed, spacing_mm)
    fix = intensity_for_registration(onto_grid(fixed, grid), onto_grid(
        fixed_mask, grid, interp=sitk.sitkNearestNeighbor, out_type=sitk.sitkUInt8))
    fmask = onto_grid(fixed_mask, grid, interp=sitk.sitkNearestNeighbor, out_type=sitk.sitkUInt8)
    mov = sitk.BinShrink(sitk.Cast(moving, sitk.sitkFloat32),
                         shrink_factors(moving.GetSpacing(), spacing_mm))
    moving_head = head_mask(mov) if moving_mask is None else onto_grid(
        moving_mask, mov, interp=sitk.sitkNearestNeighbor, out_type=sitk.sitkUInt8)
    mov = intensity_for_registration(mov, moving_head)
    tr = sitk.Euler3DTransform()
    center = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in fixed.GetSize()])
    tr.SetCenter(center)
    def method(shrink, sigmas, iterations, **kw):
        m = _method(opts, fmask, shrink, sigmas, iterations, **kw)
        m.SetMetricSamplingPercentage(min(1.0, float(opts.intrastudy_sampling_percentage)), int(opts.seed))
        m.MetricUseFixedImageGradientFilterOff()
        m.MetricUseMovingImageGradientFilterOff()
        return m

    def evaluate(transform):
        ev = method([1], [0.0], 1)
        ev.SetInitialTransform(transform)
        return float(ev.MetricEvaluate(fix, mov))

    identity_metric = evaluate(sitk.Euler3DTransform(tr))
    reg = method((2, 1), (2.0, 1.0), opts.rigid_iterations, learning_rate=0.5)
    reg.SetInitialTransform(tr, inPlace=True)
    reg.Execute(fix, mov)
    final_metric = evaluate(tr)
    # largest displacement of the fixed head's bounding-box corners
    arr = sitk.GetArrayViewFromImage(fmask)
    zyx = np.argwhere(arr > 0)
    lo, hi = zyx.min(axis=0)[::-1], zyx.max(axis=0)[::-1]
    corners = [fmask.TransformIndexToPhysicalPoint([int(v) for v in (a, b, c)])
               for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])]
    shift = max(float(np.linalg.norm(np.subtract(tr.TransformPoint(p), p))) for p in corners)
    accepted = final_metric < identity_metric and shift <= opts.max_intrastudy_shift_mm
    info = {"metric": final_metric, "identity_metric": identity_metric, "max_shift_mm": shift,
            "accepted": bool(accepted), "iterations": int(reg.GetOptimizerIteration()),
            "seconds": time.perf_counter() - t0, "parameters": list(tr.GetParameters())}
    if not accepted:
        warnings.warn(
            f"rigid registration between modalities rejected (MI {final_metric:.3f} vs {identity_metric:.3f} "
            f"at identity, largest shift {shift:.1f} mm); the scanner geometry (identity) is used")
        return flatten_affine(sitk.Euler3DTransform()), info
    return flatten_affine(tr), info


def work_grid_for(template: sitk.Image, spacing: float) -> sitk.Image:
    """The template grid at ``spacing`` mm (the template grid itself at its own spacing)."""
    if np.allclose(template.GetSpacing(), spacing):
        g = sitk.Image(template.GetSize(), sitk.sitkUInt8)
        g.CopyInformation(template)
        return g
    size = [int(np.ceil(n * s / spacing)) for n, s in zip(template.GetSize(), template.GetSpacing())]
    g = sitk.Image(size, sitk.sitkUInt8)
    g.SetDirection(template.GetDirection())
    g.SetSpacing((float(spacing),) * 3)
    # keep the physical corner of the grid
    d = np.array(template.GetDirection()).reshape(3, 3)
    corner = np.array(template.GetOrigin()) - d @ (np.array(template.GetSpacing()) / 2.0)
    g.SetOrigin(tuple(corner + d @ (np.full(3, spacing) / 2.0)))
    return g


def registration_quality(brain_work: np.ndarray, head_work: np.ndarray, fov_work: np.ndarray,
                         mutual_information: float, opts: PreprocessOptions) -> dict:
    """Quality numbers of a template registration and whether they pass ``opts``' thresholds."""
    n_brain = int(brain_work.sum())
    in_fov = brain_work & fov_work
    fov_cov = float(in_fov.sum() / max(n_brain, 1))
    bih = float((in_fov & head_work).sum() / max(int(in_fov.sum()), 1))
    checks = {
        "mutual_information": (-mutual_information >= opts.min_mutual_information,
                               f"Mattes MI {mutual_information:.3f} (must be <= {-opts.min_mutual_information:.3f})"),
        "brain_in_head": (bih >= opts.min_brain_in_head,
                          f"{bih:.1%} of the template brain inside the scan's head mask "
                          f"(must be >= {opts.min_brain_in_head:.0%})"),
        "fov_coverage": (fov_cov >= opts.min_fov_coverage,
                         f"the scan covers {fov_cov:.1%} of the template brain "
                         f"(must be >= {opts.min_fov_coverage:.0%})"),
    }
    failed = [msg for ok, msg in checks.values() if not ok]
    return {"mutual_information": float(mutual_information), "brain_in_head": bih,
            "fov_coverage": fov_cov, "passed": not failed, "failed_checks": failed}


def registered_pipeline(imgs: dict, ref_name: str, user_mask, opts: PreprocessOptions,
                        timings: dict) -> PreprocessedCase:
    """Raw scans: N4 -> register reference to the template (others rigidly to the reference)
    -> resample into the template grid -> brain mask from the template (or the user's mask)."""
    from uad_label.template import load_template_brain_mask, load_template_t1, template_brain_xyz

    ref = imgs[ref_name]
    t0 = time.perf_counter()
    template = load_template_t1()
    tmask = load_template_brain_mask(opts.template_mask_threshold)
    _registration_template(float(opts.registration_spacing_mm), float(opts.template_mask_threshold))
    timings["template"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    heads = {k: head_mask(sitk.BinShrink(im, shrink_factors(im.GetSpacing(), opts.registration_spacing_mm)))
             for k, im in imgs.items()}
    corrected = {}
    for k, im in imgs.items():
        if opts.bias_correction:
            corrected[k] = n4_bias_correct(im, mask=None, voxel_mm=opts.n4_voxel_mm,
                                           iterations=opts.n4_iterations,
                                           convergence=opts.n4_convergence)[0]
        else:
            corrected[k] = sitk.Cast(im, sitk.sitkFloat32)
    timings["n4"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    to_ref, info = register_to_template(corrected[ref_name], opts, moving_head=heads[ref_name])
    timings["register"] = time.perf_counter() - t0
    transforms = {ref_name: to_ref}
    rigid_info = {}
    t0 = time.perf_counter()
    for k in imgs:
        if k == ref_name:
            continue
        if opts.multimodal_registration:
            r, ri = register_rigid(corrected[ref_name], corrected[k], opts, fixed_mask=heads[ref_name],
                                   spacing_mm=opts.registration_spacing_mm, moving_mask=heads[k])
            rigid_info[k] = ri
            comp = sitk.CompositeTransform(3)
            comp.AddTransform(r)
            comp.AddTransform(to_ref)
            transforms[k] = flatten_affine(comp)
        else:
            transforms[k] = to_ref
    if len(imgs) > 1:
        timings["register_modalities"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    grid = work_grid_for(template, opts.spacing)
    interp = INTERPOLATORS[opts.interpolation]
    # the reference's points outside the scan get NaN: its field of view without resampling an image of ones
    # (ITK's inside-the-buffer rule is one for every interpolator: the same voxels, 0.1 s less)
    arrays = {k: onto_grid_xyz(corrected[k], grid, transforms[k], interp=interp,
                               fill=np.nan if k == ref_name else 0.0) for k in imgs}
    fov = ~np.isnan(arrays[ref_name])
    arrays[ref_name][~fov] = 0.0
    head_w = onto_grid_xyz(heads[ref_name], grid, to_ref, interp=sitk.sitkNearestNeighbor,
                           out_type=sitk.sitkUInt8) > 0
    tbrain = (template_brain_xyz(opts.template_mask_threshold) if same_geometry(tmask, grid, tol=1e-6)
              else onto_grid_xyz(tmask, grid, interp=sitk.sitkNearestNeighbor, out_type=sitk.sitkUInt8) > 0)
    if user_mask is not None:
        brain = onto_grid_xyz(user_mask, grid, to_ref, interp=sitk.sitkLinear) >= 0.5
    else:
        brain = tbrain & fov
    timings["resample"] = time.perf_counter() - t0

    quality = registration_quality(tbrain, head_w, fov, info["mutual_information"], opts)
    registration = {
        "performed": True,
        **quality,
        "stages": info,
        "transform_matrix": list(to_ref.GetMatrix()),
        "transform_translation": list(to_ref.GetTranslation()),
        "transform_convention": "template (work) LPS point -> native reference LPS point",
        "modalities": rigid_info,
    }
    case = PreprocessedCase(
        arrays=arrays, brain=brain, spacing=tuple(float(s) for s in grid.GetSpacing()),
        affine=ras_affine(grid), native_reference=ref, reference=ref_name, mode="registered",
        registration=registration, work_to_native=to_ref, modality_transforms=transforms,
        _work_grid=grid)
    if not quality["passed"]:
        msg = (f"registration of {ref_name} to the MNI152 template failed its quality check: "
               + "; ".join(quality["failed_checks"])
               + ". The scan may not be a brain MRI, may cover too little of the brain, or may be "
                 "too corrupted; results would be meaningless.")
        if opts.on_registration_failure == "warn":
            warnings.warn(msg)
        else:
            raise RegistrationError(msg, registration)
    return case
