"""Ahead-of-time GPU checks that need no GPU.

* ``triton_aot``: records the Triton launches the public ops make, compiles
  each configuration for sm_80 / sm_90 with Triton's own compiler and reports
  registers, spills, shared memory and the global load/store vector widths.
* ``cuda_resources``: the same report for the CUDA C++ kernels (csrc/cuda),
  from nvcc cubins, with the theoretical occupancy at the launch block size.

Both expose ``main()`` (a printed table) and functions returning report rows.
"""
