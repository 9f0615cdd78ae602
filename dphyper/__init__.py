"""dphyper: differentially private LoRA for a diffusion model with a hypernetwork.

The package is split by stage (see ../README.md and DESIGN.md):
``data`` (public data and private folders), ``diffusion`` (base UNet), ``encoder``
(dataset embedding phi), ``evaluator`` (FID/KID features), and the private path.
"""

__version__ = "0.1.0"
