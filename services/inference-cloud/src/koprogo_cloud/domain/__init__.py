"""Pure rules of the cloud worker: deployments, retries, cooldowns, failure classification."""
