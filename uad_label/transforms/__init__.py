"""Array and tensor transforms shared by inference (detectors) and training, so that training data go
through exactly what inference does. SimpleITK- and MONAI-free on purpose: they import on the GPU
image, which has neither (MONAI's SpatialCrop/SpatialPad/Resize would otherwise do the canvas and
model-grid work).

  intensity   equalise_in_brain, median_normalise, percentile_scale, scale_modalities, normalise_slices
  canvas      Canvas: brain-centred crop/pad + average pooling and its inverse (the volume autoencoders)
  model_grid  model_grid_shape, to_model_grid, pad_to (PatchDDM's grid)
  slices      SliceMapper: volume <-> normalised network slices (inpainting)
"""
