"""The streaming control plane: the driver and its pure policies (autoscaling, restarts, the stall
watchdog) and the metrics endpoint that reads the driver's view."""
