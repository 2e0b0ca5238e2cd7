"""What reads the model: error-injected reasoning traces, linear probes and layer sweeps, P(True) estimators."""
