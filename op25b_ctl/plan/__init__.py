"""Pure planning: modes at time t, the desired table, the diff, the nft text. No I/O."""
