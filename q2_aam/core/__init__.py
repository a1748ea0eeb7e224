"""The torch core of q2-aam.

Nothing in this package imports QIIME 2: it takes plain Python objects,
numpy/scipy arrays and file paths, and is usable and testable without it.
Training runs through Hugging Face Accelerate on one process (CPU or GPU);
multi-process training (DDP/FSDP under ``torchrun``/``accelerate launch``)
is not wired in yet: ``fit`` does not shard data or gather embeddings.
"""
