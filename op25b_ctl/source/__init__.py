"""Where the controller is told things: the state directory, overrides, the audit trail."""
