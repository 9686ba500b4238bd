"""Engineers' operations: apply, pool overrides, rollout tick, each locked and audited."""
