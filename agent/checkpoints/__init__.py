"""The contract between trainer and driver: the model store (versions, manifests, atomic
publishing), the strict weight loader, noticing newer versions, and the reference checkpoint
Charles ships."""
