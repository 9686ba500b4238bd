"""The long-running controller: reconcile passes, the loop, systemd notify, metrics."""
