"""The filesystem side of Ferry. Knows nothing about HTTP."""
