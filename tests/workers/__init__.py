"""Scripts that tests launch as separate processes (real workers, real kills)."""
