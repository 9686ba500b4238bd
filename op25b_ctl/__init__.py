"""op25b-ctl: Outbound Port 25 Blocking controller for broadband access gateways.

Data flow, one module per stage (pure unless marked I/O):

    loader (I/O)  policy files -> model        validated Policy
    modes         Policy + time/overrides  ->  mode of each pool
    ruleset       Policy + modes           ->  desired Table
    diff          live Table + desired     ->  Transaction (ordered ops)
    render        Transaction              ->  nft script text
    backend (I/O) python-nftables: read live Table, check + apply Transaction
    netlink (I/O) cheap counter reads over netlink, no libnftables cache
    applier       glue: read -> diff -> check -> apply
    cli           op25b-ctl
"""

from op25b_ctl.errors import Op25bError, PolicyError

__version__ = "0.1.0"
__all__ = ["Op25bError", "PolicyError", "__version__"]
