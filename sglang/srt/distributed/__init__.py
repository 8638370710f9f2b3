"""Tensor parallelism: the process group, the scheduler's link to its workers, the workers."""
