"""``computewatch demo``: a whole simulated cluster on loopback."""
