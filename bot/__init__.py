"""consentgate: a messaging gateway for election campaigns that makes consent impossible to skip."""

__version__ = "0.1.0"
