"""Compiled engine of recur: the tape, BLAS products and the op kernels."""
