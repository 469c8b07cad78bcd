"""What travels inside SSH channels, sans-IO: SFTP version 3 (:mod:`.sftp`) and the legacy
SCP stream (:mod:`.scp`).

The SSH transport itself (key exchange, encryption, authentication, channel multiplexing)
is asyncssh's, on both sides of the appliance (:mod:`appliance.proxy.ssh.runner`); these
modules read the formats carried in session channels so that the appliance can decide each
file operation and record each transfer. No asyncio, socket, clock or logging here.
"""
