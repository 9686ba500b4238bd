"""op25b-ctl: Outbound Port 25 Blocking controller for broadband access gateways.

The packages follow the data flow; their import order is written once, in the README
("Data flow through the package"), and checked by tests/unit/test_layers.py. The two seams
are `kernel.base.Kernel` (the kernel's ruleset) and `source.base.Source` (what the
controller is told); planning between them is pure.
"""

from op25b_ctl.errors import Op25bError, PolicyError

__version__ = "0.1.0"
__all__ = ["Op25bError", "PolicyError", "__version__"]
