"""What the worker observes about itself for the health action: job counters, the GPU."""
