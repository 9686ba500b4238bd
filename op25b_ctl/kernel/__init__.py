"""The kernel seam: `Kernel` (base.py), the real one (nft.py) and the in-memory one (memory.py).

Only this package touches nftables or netlink; `netlink.py` and its codec `nlcodec.py` are
private to `nft.py`.
"""
