"""What the providers and every target share at run time: quorum, bearer tokens, secret stores, probes."""
