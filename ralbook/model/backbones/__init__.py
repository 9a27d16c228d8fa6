"""One module per backbone; each encodes videos and queries and scores them."""
