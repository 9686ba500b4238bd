"""A lab gateway in network namespaces, for `make demo`, the e2e tests and the benchmarks.

Not part of the installed package: it needs the dev extra (aiosmtpd) and root."""
