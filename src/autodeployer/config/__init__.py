"""Configuration: environment variables (one app, the seed interface), a YAML file (many apps) and dploy
projects into one model (`loader`, `dploy`); `variables` is the registry of every variable we read."""
