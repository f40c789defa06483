"""Where and how the maths runs: the device, threads and signals (runtime), the float format (precision)."""
