"""Side-by-side load-tool comparison (work in progress)."""
