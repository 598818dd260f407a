"""Image input/output: robust loading, atomic writes and anomaly-map overlays."""
