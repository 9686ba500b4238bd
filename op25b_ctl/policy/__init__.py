"""What the operator wrote: the policy files' model, their loader, engineers' overrides."""
