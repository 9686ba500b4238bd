"""Seeded random policies, for checking that any policy change converges in one transaction."""

from __future__ import annotations

import random

from op25b_ctl.policy.model import MODES, Action, Gateway, Policy, Pool, Relay

# Documentation space carved into /28s (v4) and /48s (v6), so pools never overlap.
V4_BLOCKS = [f"{net}.{i * 16}/28" for net in ("192.0.2", "198.51.100") for i in range(16)]
V6_BLOCKS = [f"2001:db8:{i:x}::/48" for i in range(1, 64)]
RELAY = Relay(name="relay", addresses=["203.0.113.25/32", "2001:db8:ff00::25/128"])


ACTIONS: tuple[Action, ...] = ("drop", "reject")


def random_policy(rng: random.Random, action: Action = "drop") -> Policy:
    v4 = rng.sample(V4_BLOCKS, rng.randint(2, 12))
    v6 = rng.sample(V6_BLOCKS, rng.randint(0, 12))
    pools = []
    n_pools = rng.randint(1, 5)
    for i in range(n_pools):
        mine = v4[i::n_pools] + v6[i::n_pools]
        if not mine:
            continue
        dynamic = rng.random() > 0.2
        pools.append(
            Pool(
                name=rng.choice(["east", "west", "north", "south", "kita", "minami"]) + f"-{i}",
                dynamic=dynamic,
                mode=rng.choice(MODES) if dynamic else "off",
                prefixes=mine,
            )
        )
    return Policy(
        gateway=Gateway(action=action, priority=rng.choice([0, -10, 5])),
        pools=tuple(pools),
        relays=(RELAY,),
    )
