"""The torch core of q2-aam.

Nothing in this package imports QIIME 2: it takes plain Python objects,
numpy/scipy arrays and file paths, so that it can run under ``torchrun`` or
``accelerate launch`` on many devices, where a QIIME 2 action cannot.
"""
