"""Triton kernels of segfast, installed as segfast.triton_kernels."""
