"""Provider adapters: translate between a provider's wire format and consentgate's plain types.

Adapters know nothing about consent. They can only send a message that carries a
:class:`adapters.base.Permit` issued by the consent gate for that exact message.
"""
