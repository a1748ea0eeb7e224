from setuptools import find_packages, setup

setup(
    name="q2-aam",
    version="0.1.0",
    description="QIIME 2 plugin for Attention All Microbes: transformers over ASV sequences.",
    license="BSD-3-Clause",
    packages=find_packages(include=["q2_aam", "q2_aam.*"]),
    package_data={"q2_aam": ["citations.bib", "assets/*"]},
    python_requires=">=3.10",
    # qiime2, q2-types, q2-sample-classifier (and its scikit-learn), biom-format,
    # scikit-bio, unifrac come from QIIME 2's own distribution (Debian packages or conda),
    # not from PyPI.
    install_requires=["torch>=2.1", "accelerate>=0.30", "safetensors>=0.4", "numpy",
                      "scipy", "pandas", "matplotlib"],
    # Only for --p-tensorboard-dir: pip install 'q2-aam[tensorboard]'.
    extras_require={"tensorboard": ["tensorboard>=2.12"]},
    entry_points={"qiime2.plugins": ["q2-aam=q2_aam.plugin_setup:plugin"]},
    zip_safe=False,
)
