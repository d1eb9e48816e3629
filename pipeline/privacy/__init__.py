"""Privacy: membership-inference audit of trained generators, DP-SGD training, TSTR."""
