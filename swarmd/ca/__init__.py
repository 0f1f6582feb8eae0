"""Identity and PKI: IDs, join tokens, root CA and node certificates, as swarmkit makes them."""
