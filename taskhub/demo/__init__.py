"""The offline demo: a stand-in for the HTTP services and a feed of synthetic check-ins."""
