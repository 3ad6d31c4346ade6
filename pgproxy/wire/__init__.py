"""Sans-IO PostgreSQL protocol v3: framing, messages, authentication exchanges.

Nothing in this package imports asyncio or touches a socket.
"""
