"""uad-label: unsupervised anomaly detection for brain MRI, served by MONAI Label."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def _requirements(name: str) -> list[str]:
    lines = (HERE / "requirements" / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "-r"))]


setup(
    name="uad-label",
    version="0.1.0",
    description=("Unsupervised anomaly detection for brain MRI: MONAI Label server app, GPU kernels, "
                 "3D Slicer review module"),
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # The kernel library lives in kernels/ (layout fixed by the product design) but imports as
    # uad_kernels: a top-level `kernels` would collide with the PyPI package of that name.
    # server_app/ ships as uad_server_app so `uad serve` finds the MONAI Label app in any install
    packages=find_packages(include=["uad_label", "uad_label.*"]) + ["uad_kernels"] + [
        "uad_kernels." + p for p in find_packages(where="kernels")
    ] + ["uad_server_app"] + ["uad_server_app." + p for p in find_packages(where="server_app")],
    package_dir={"uad_kernels": "kernels", "uad_server_app": "server_app"},
    package_data={"uad_label": ["assets/*", "assets/**/*"]},
    include_package_data=True,
    install_requires=_requirements("base.txt"),
    # SAMSEG is no extra: it needs TensorFlow, which must not sit next to the server (scripts/samseg_env.sh)
    extras_require={"dev": _requirements("dev.txt"), "ray": _requirements("ray.txt")},
    entry_points={"console_scripts": ["uad=uad_label.cli.main:main"]},
)
