"""The torch core of q2-aam.

Nothing in this package imports QIIME 2: it takes plain Python objects,
numpy/scipy arrays and file paths, and is usable and testable without it.
Training runs through Hugging Face Accelerate, in one process (CPU or GPU)
or many (DDP or FSDP; ``launch.run_workers``, ``torchrun`` or ``accelerate
launch``): see ``engine.fit``.
"""
