"""op25b-ctl: Outbound Port 25 Blocking controller for broadband access gateways.

Packages in import order (each imports only from those before it; see the README's module
map): policy/ -> plan/ -> kernel/ -> source/ -> ops/ -> daemon/ -> cli/. The two seams are
`kernel.base.Kernel` (the kernel's ruleset) and `source.base.Source` (what the controller
is told); everything between them is pure planning.
"""

from op25b_ctl.errors import Op25bError, PolicyError

__version__ = "0.1.0"
__all__ = ["Op25bError", "PolicyError", "__version__"]
